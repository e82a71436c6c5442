"""The one place that turns errors into HTTP answers: the service's error tree
(``tessera.service.errors``), FastAPI's and Starlette's own errors, a client that left, and anything
unhandled (a 500 with a request id). The front door (``tessera.service.http.front_door``) and the
app's exception handlers both answer through ``error_answer``."""

from __future__ import annotations

import logging
import traceback
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from tessera.service.errors import ClientDisconnected, TesseraError, error_body

logger = logging.getLogger(__name__)


def tessera_error_response(scope, exc: TesseraError) -> JSONResponse:
    if exc.status >= 500 and exc.status != 503:
        logger.warning("%s %s -> %d %s: %s", scope.get("method"), scope.get("path"), exc.status, exc.code, exc.detail)
    return JSONResponse(error_body(exc.detail, exc.code), status_code=exc.status, headers=exc.headers)


def error_answer(scope, exc: Exception) -> JSONResponse:
    """The answer to any exception a request raised: the error tree's status and code, 499 for a
    client that left, else a 500 with a request id (``internal_error_response``)."""
    if isinstance(exc, TesseraError):
        return tessera_error_response(scope, exc)
    if isinstance(exc, ClientDisconnect):
        return tessera_error_response(scope, ClientDisconnected("the client disconnected while sending the request body"))
    return internal_error_response(scope, exc)


async def _tessera_error(request: Request, exc: TesseraError) -> JSONResponse:
    return tessera_error_response(request.scope, exc)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed"}
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 404:
        detail = f"no route {request.url.path!r}; see /docs for the API"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path!r}; see /docs for the API"
    code = codes.get(exc.status_code, "http_error")
    return JSONResponse(error_body(detail, code), status_code=exc.status_code, headers=getattr(exc, "headers", None))


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = []
    for err in exc.errors():
        where = ".".join(str(part) for part in err.get("loc", ()))
        problems.append(f"{where}: {err.get('msg', 'invalid')}")
    detail = "invalid request: " + "; ".join(problems) + "; see /docs for the expected parameters"
    return JSONResponse(error_body(detail, "invalid_request"), status_code=422)


async def _client_disconnect(request: Request, exc: ClientDisconnect) -> JSONResponse:
    return error_answer(request.scope, exc)


def internal_error_response(scope, exc: Exception, started: bool = False) -> JSONResponse | None:
    """A 500 for an exception nothing else handled: one log line with a request id (not a
    traceback) and ``Connection: close``, so that a keep-alive client's next request goes on a
    fresh connection. None once the answer has ``started``: the connection ends there."""
    request_id = uuid.uuid4().hex[:16]
    where = traceback.extract_tb(exc.__traceback__)[-1]
    logger.error("request %s %s %s failed: %s: %s (%s:%d)", request_id, scope.get("method"), scope.get("path"),
                 type(exc).__name__, str(exc)[:200], where.filename, where.lineno)
    if started:
        return None
    detail = f"internal error (request id {request_id}); this is a bug in the service, please report it"
    return JSONResponse(error_body(detail, "internal_error"), status_code=500,
                        headers={"Connection": "close", "X-Request-Id": request_id})


class ErrorGuard:
    """ASGI middleware: an exception nothing else handled becomes a 500
    (``internal_error_response``).

    Starlette's own handler for ``Exception`` re-raises after answering, so uvicorn would log
    the traceback a second time; this one answers and stops there.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # noqa: BLE001 - the last line of defence
            response = internal_error_response(scope, exc, started)
            if response is not None:
                await response(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    """Map the error tree (and FastAPI's own errors) to ``{"detail", "code"}`` JSON responses."""
    app.add_exception_handler(TesseraError, _tessera_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ClientDisconnect, _client_disconnect)
    app.add_middleware(ErrorGuard)  # inside every other middleware, so they see the 500
