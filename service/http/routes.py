"""HTTP routes: what each endpoint declares (parameters, bodies, answers, errors) for the OpenAPI
document, and the pipeline that serves it (``tessera.service.pipeline.operations``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from tessera.service.errors import error_body
from tessera.service.http.dependencies import KEY, State
from tessera.service.http.front_door import DECODE, ENCODE, ENDPOINTS_SERVED, answer
from tessera.service.pipeline.codecs import IMAGE_TYPES, JSON, NPY, PNG
from tessera.service.http.schemas import (
    DecodeJSONRequest,
    DecodeResponse,
    EncodeJSONRequest,
    EncodeResponse,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
)

router = APIRouter()
DOCS_ASSETS = "docs-assets"  # relative, so the page works behind a proxy's path prefix
BEARER = [{"HTTPBearer": []}]  # the API key, as the routes with the KEY dependency declare it


def _binary(description: str) -> dict[str, Any]:
    return {"schema": {"type": "string", "format": "binary"}, "description": description}


ERRORS = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "undecodable body (image, npy, base64 or JSON)",
        401: "missing or unknown API key (when the server sets TESSERA_API_KEYS)",
        404: "unknown model",
        406: "Accept names no type this endpoint answers",
        413: "body, tile count or image pixels over the limits",
        415: "unsupported Content-Type",
        422: "wrong sheet size, shape, dtype or non-finite values",
        503: "overloaded, shutting down or model failure; see Retry-After",
        504: "not answered within the request timeout",
    }.items()
}

ENCODE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            **{kind: _binary("one 32x32 tile or a sheet with sides multiple of 32; one frame") for kind in IMAGE_TYPES},
            NPY: _binary("uint8 [N, 32, 32, 3] or [N, 32, 32, 4] (RGBA)"),
            JSON: {"schema": EncodeJSONRequest.model_json_schema(), "example": EncodeJSONRequest.model_config["json_schema_extra"]["examples"][0]},
        },
    },
    "parameters": ENDPOINTS_SERVED[ENCODE].openapi(),
    "security": BEARER,
}
DECODE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            NPY: _binary("float [N, *latent_shape]"),
            JSON: {"schema": DecodeJSONRequest.model_json_schema(), "example": DecodeJSONRequest.model_config["json_schema_extra"]["examples"][0]},
        },
    },
    "parameters": ENDPOINTS_SERVED[DECODE].openapi(),
    "security": BEARER,
}


# -- routes ----------------------------------------------------------------------------------


@router.post(
    ENCODE,
    summary="Encode tiles to latents",
    response_model=EncodeResponse,
    responses={
        200: {
            "description": "latents, as JSON or float32 npy [N, *latent_shape]",
            "content": {NPY: _binary("float32 [N, *latent_shape]; headers X-Tessera-Model, X-Tessera-Grid, X-Tessera-Cached, "
                                     "X-Tessera-Refined (with ?refine=)")},
        },
        **ERRORS,
    },
    openapi_extra=ENCODE_BODY,
)
async def encode(request: Request) -> Response:
    """Encode a tile, a sprite sheet (cut row-major into 32x32 tiles) or many tiles.

    Body by Content-Type: an image, ``application/x-npy`` uint8 tiles, or JSON with base64
    images. A sheet laid out with Tiled's ``margin`` and ``spacing`` is cut by them (whole tiles
    that fit; without them both sides must be multiples of 32). Models whose ``channels`` are
    RGBA (GET /v1/models) take alpha as it is; RGB models multiply it into the colours. Answers
    JSON (default) or ``application/x-npy`` by Accept. ``refine`` spends encode effort: the
    latents are refined through the decoder, closer to what the tiles decode from.
    """
    return await answer(ENDPOINTS_SERVED[ENCODE], request.app, request.scope, request.receive)


@router.post(
    DECODE,
    summary="Decode latents to tiles",
    response_class=Response,
    responses={
        200: {
            "description": "one PNG sheet (default), uint8 npy [N, 32, 32, 3] (or 4 for RGBA models), or JSON with base64 PNG tiles",
            "content": {
                PNG: _binary("sheet `columns` tiles wide, row-major, unused cells black (transparent for RGBA models), "
                             "with `margin` and `spacing` when given"),
                NPY: _binary("uint8 [N, 32, 32, 3], or [N, 32, 32, 4] for RGBA models"),
                JSON: {"schema": DecodeResponse.model_json_schema()},
            },
        },
        **ERRORS,
    },
    openapi_extra=DECODE_BODY,
)
async def decode(request: Request) -> Response:
    """Decode latents ``[N, *latent_shape]`` (npy or JSON) back to 32x32 tiles: RGB, or RGBA for
    RGBA models. A PNG sheet is laid out with ``margin`` and ``spacing`` when given (Tiled's).
    ``decoder=sharp`` decodes with the model's sharp decoder, where it has one."""
    return await answer(ENDPOINTS_SERVED[DECODE], request.app, request.scope, request.receive)


@router.get(
    "/v1/models",
    summary="Loaded models and request limits",
    response_model=ModelsResponse,
    dependencies=KEY,
    responses={401: ERRORS[401]},
)
async def models(state: State) -> dict:
    registry = state.registry
    return {
        "default": registry.default,
        "models": [m.describe(registry.default) for m in registry.models.values()],
        "skipped": [{"name": s.name, "file": s.file, "reason": s.reason} for s in registry.skipped],
        "limits": {
            "max_tiles_per_request": state.settings.max_tiles_per_request,
            "max_body_bytes": state.settings.max_body_bytes,
            "max_batch_tiles": state.settings.max_batch_tiles,
        },
    }


@router.get("/healthz", summary="The process is alive", response_model=HealthResponse)
@router.head("/healthz", include_in_schema=False)
async def healthz() -> dict:
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get(
    "/readyz",
    summary="Every model is loaded and warmed up",
    response_model=HealthResponse,
    responses={503: {"model": ErrorResponse, "description": "still warming up, or shutting down"}},
)
async def readyz(request: Request) -> Response:
    state = request.app.state.tessera
    reason = state.lifecycle.not_ready_reason()
    if reason is None and state.registry is not None:
        reason = state.registry.stuck_reason(stuck_after_s=state.settings.request_timeout_s)
    if reason is not None:
        return JSONResponse(error_body(f"not ready: {reason}", "not_ready"), status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    """The API description; behind the API key like /v1/models unless TESSERA_OPENAPI_PUBLIC."""
    if not request.app.state.tessera.settings.openapi_public:
        request.app.state.tessera.keys.check(request.headers.get("authorization"))
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """Swagger UI from the swagger-ui-bundle package's files: no CDN, so it works offline."""
    if not request.app.state.tessera.settings.openapi_public:
        request.app.state.tessera.keys.check(request.headers.get("authorization"))
    return get_swagger_ui_html(openapi_url="openapi.json", title="Tessera API", swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    if not request.app.state.tessera.settings.metrics_public:
        request.app.state.tessera.keys.check(request.headers.get("authorization"))
    return Response(request.app.state.tessera.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
