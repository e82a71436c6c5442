"""The HTTP face of the service: the app, its routes and the front door, API keys, schemas and the
OpenAPI document, connection limits, error answers and the demo page. The only part that imports
FastAPI or Starlette."""
