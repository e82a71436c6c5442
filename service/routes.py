"""HTTP routes: read and check the body, hand tiles to the pipeline, answer in the asked format."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST

from service import codecs
from service.cache import LatentCache
from service.codecs import IMAGE_TYPES, JSON, NPY, PNG, Limits
from service.errors import BadRequest, InvalidInput, NotReady, Overloaded, ShuttingDown, TooLarge, UnsupportedMediaType, error_body
from service.metrics import Metrics
from service.offload import INLINE_BYTES, off_loop
from service.pipeline import decode_latents, encode_tiles
from service.registry import Registry
from service.schemas import (
    DecodeJSONRequest,
    DecodeResponse,
    EncodeJSONRequest,
    EncodeResponse,
    ErrorResponse,
    HealthResponse,
    ModelsResponse,
)
from service.settings import Settings
from tiles import assemble, default_columns


@dataclass
class ServiceState:
    """What the routes need, set up by the app's lifespan."""

    settings: Settings
    registry: Registry
    metrics: Metrics
    cache: LatentCache | None
    limits: Limits
    draining: bool = False  # set on SIGTERM (service.shutdown) and by the lifespan's shutdown
    in_flight: int = 0  # admitted /v1/encode and /v1/decode requests not answered yet
    started_at: float = field(default_factory=time.monotonic)

    @contextlib.contextmanager
    def admit(self) -> Iterator[None]:
        """Count one request as in flight for its whole life; 503 while draining or at the limit."""
        if self.draining:
            raise ShuttingDown("the server is shutting down; retry on another instance", retry_after_s=5)
        limit = self.settings.max_requests_in_flight
        if self.in_flight >= limit:
            raise Overloaded(
                f"{self.in_flight} requests are in progress (limit {limit}, TESSERA_MAX_REQUESTS_IN_FLIGHT); retry later"
            )
        self.in_flight += 1
        try:
            yield
        finally:
            self.in_flight -= 1


async def get_state(request: Request) -> ServiceState:
    state = getattr(request.app.state, "tessera", None)
    if state is None:
        raise NotReady("the service is starting; retry in a moment", retry_after_s=1)
    return state


_bearer = HTTPBearer(auto_error=False, description="one of TESSERA_API_KEYS, when the server sets them")


async def require_key(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries a known API key (a no-op without TESSERA_API_KEYS)."""
    request.app.state.keys.check(request.headers.get("authorization"))


def known_query(*names: str):
    """A dependency refusing query parameters other than ``names`` (422): a typo like ``?modle=``
    would otherwise silently fall back to a default."""
    known = frozenset(names)

    async def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - known)
        if unknown:
            raise InvalidInput(
                f"unknown query parameter(s) {unknown}; this endpoint takes {sorted(known)}",
                code="unknown_parameter",
            )

    return Depends(check)


State = Annotated[ServiceState, Depends(get_state)]
KEY = [Depends(require_key)]
ModelName = Annotated[str | None, Query(description="model name (GET /v1/models); omitted: the default model", max_length=200)]

router = APIRouter()
DOCS_ASSETS = "docs-assets"  # relative, so the page works behind a proxy's path prefix


# -- helpers ---------------------------------------------------------------------------------


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if length > max_bytes:
            raise TooLarge(f"body of {length} bytes exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise TooLarge(f"body exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
        chunks.append(chunk)
    return b"".join(chunks)


async def _wait_disconnect(request: Request) -> None:
    """Returns when the client disconnects (call only after the body was read)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


@contextlib.asynccontextmanager
async def client_gone(request: Request) -> AsyncIterator[asyncio.Task]:
    """A task that completes when the client goes away; the batcher then drops its tiles."""
    task = asyncio.ensure_future(_wait_disconnect(request))
    try:
        yield task
    finally:
        task.cancel()


def _content_type(request: Request, accepted: tuple[str, ...]) -> str:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", ""):
        raise UnsupportedMediaType(f"Content-Encoding {encoding!r} is not accepted; send the body uncompressed "
                                   f"(PNG and npy bodies are compact already)", code="unsupported_encoding")
    kind = codecs.media_type(request.headers.get("content-type"))
    if kind not in accepted:
        shown = kind or "no Content-Type"
        raise UnsupportedMediaType(f"cannot read {shown}; send one of: {', '.join(accepted)}")
    return kind


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
            NPY: _binary("uint8 [N, 32, 32, 3] or [N, 32, 32, 4]"),
            JSON: {"schema": EncodeJSONRequest.model_json_schema(), "example": EncodeJSONRequest.model_config["json_schema_extra"]["examples"][0]},
        },
    }
}
DECODE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            NPY: _binary("float [N, *latent_shape]"),
            JSON: {"schema": DecodeJSONRequest.model_json_schema(), "example": DecodeJSONRequest.model_config["json_schema_extra"]["examples"][0]},
        },
    }
}


# -- routes ----------------------------------------------------------------------------------


@router.post(
    "/v1/encode",
    summary="Encode tiles to latents",
    dependencies=[*KEY, known_query("model")],
    response_model=EncodeResponse,
    responses={
        200: {
            "description": "latents, as JSON or float32 npy [N, *latent_shape]",
            "content": {NPY: _binary("float32 [N, *latent_shape]; headers X-Tessera-Model, X-Tessera-Grid, X-Tessera-Cached")},
        },
        **ERRORS,
    },
    openapi_extra=ENCODE_BODY,
)
async def encode(request: Request, state: State, model: ModelName = None) -> Response:
    """Encode a tile, a sprite sheet (cut row-major into 32x32 tiles) or many tiles.

    Body by Content-Type: an image, ``application/x-npy`` uint8 tiles, or JSON with base64
    images. RGBA is multiplied by alpha. Answers JSON (default) or ``application/x-npy`` by Accept.
    """
    with state.admit():
        return await _encode(request, state, model)


async def _encode(request: Request, state: ServiceState, model: str | None) -> Response:
    started = time.monotonic()
    served = state.registry.get(model)
    kind = _content_type(request, (*IMAGE_TYPES, NPY, JSON))
    answer = codecs.negotiate(request.headers.get("accept"), (JSON, NPY))
    with served.encoder.expect() as ticket:  # a batch waiting for company waits for this request
        body = await read_body(request, state.settings.max_body_bytes)
        if kind == NPY and len(body) <= INLINE_BYTES:
            batch = codecs.tiles_from_npy(body, state.limits)
        else:  # images, JSON of base64 images and large arrays decode in the decode threads
            reader = {NPY: codecs.tiles_from_npy, JSON: codecs.tiles_from_json}.get(kind, codecs.tiles_from_image)
            batch = await off_loop(lambda: reader(body, state.limits), state.settings.decode_timeout_s, "the body")
        async with client_gone(request) as gone:
            result = await encode_tiles(
                served, batch.tiles, cache=state.cache, metrics=state.metrics,
                deadline=started + state.settings.request_timeout_s, gone=gone, ticket=ticket,
            )
    headers = {
        "X-Tessera-Model": served.name,
        "X-Tessera-Cached": str(result.cached),
        "X-Tessera-Latent-Shape": ",".join(map(str, served.latent_shape)),
    }
    if batch.grid is not None:
        headers["X-Tessera-Grid"] = f"{batch.grid[0]},{batch.grid[1]}"
    if answer == NPY:
        return Response(codecs.npy_bytes(result.latents), media_type=NPY, headers=headers)
    return JSONResponse(
        {
            "model": served.name,
            "latent_shape": list(served.latent_shape),
            "dtype": "float32",
            "count": len(result.latents),
            "grid": list(batch.grid) if batch.grid is not None else None,
            "grids": [list(g) for g in batch.grids],
            "cached": result.cached,
            "latents": result.latents.tolist(),
        },
        headers=headers,
    )


@router.post(
    "/v1/decode",
    summary="Decode latents to tiles",
    dependencies=[*KEY, known_query("model", "columns")],
    response_class=Response,
    responses={
        200: {
            "description": "one PNG sheet (default), uint8 npy [N, 32, 32, 3], or JSON with base64 PNG tiles",
            "content": {
                PNG: _binary("sheet `columns` tiles wide, row-major, unused cells black"),
                NPY: _binary("uint8 [N, 32, 32, 3]"),
                JSON: {"schema": DecodeResponse.model_json_schema()},
            },
        },
        **ERRORS,
    },
    openapi_extra=DECODE_BODY,
)
async def decode(
    request: Request,
    state: State,
    model: ModelName = None,
    columns: Annotated[int | None, Query(ge=1, le=4096, description="sheet width in tiles; default N if N <= 16 else ceil(sqrt(N))")] = None,
) -> Response:
    """Decode latents ``[N, *latent_shape]`` (npy or JSON) back to 32x32 RGB tiles."""
    with state.admit():
        return await _decode(request, state, model, columns)


async def _decode(request: Request, state: ServiceState, model: str | None, columns: int | None) -> Response:
    started = time.monotonic()
    served = state.registry.get(model)
    kind = _content_type(request, (NPY, JSON))
    answer = codecs.negotiate(request.headers.get("accept"), (PNG, NPY, JSON))
    max_tiles = state.limits.max_tiles
    with served.decoder.expect() as ticket:  # a batch waiting for company waits for this request
        body = await read_body(request, state.settings.max_body_bytes)

        def read() -> tuple:
            if kind == NPY:
                return codecs.latents_from_npy(body, served.latent_shape, max_tiles, served.name), None
            return codecs.latents_from_json(body, served.latent_shape, max_tiles, served.name)

        if kind == NPY and len(body) <= INLINE_BYTES:
            latents, body_columns = read()
        else:
            latents, body_columns = await off_loop(read, state.settings.decode_timeout_s, "the body")
        async with client_gone(request) as gone:
            tiles = await decode_latents(
                served, latents, deadline=started + state.settings.request_timeout_s, gone=gone, ticket=ticket
            )
    headers = {"X-Tessera-Model": served.name}
    if answer == NPY:
        return Response(codecs.npy_bytes(tiles), media_type=NPY, headers=headers)
    if answer == JSON:
        return JSONResponse({"model": served.name, "count": len(tiles), "tiles": codecs.tiles_base64(tiles)}, headers=headers)
    width = columns or body_columns or default_columns(len(tiles))
    rows = -(-len(tiles) // width)
    headers["X-Tessera-Grid"] = f"{rows},{width}"
    return Response(codecs.png_bytes(assemble(tiles, width)), media_type=PNG, headers=headers)


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
    state: ServiceState | None = getattr(request.app.state, "tessera", None)
    if state is None:
        reason = "models are loading"
    elif state.draining:
        reason = "shutting down"
    else:
        reason = state.registry.not_ready_reason(stuck_after_s=state.settings.request_timeout_s)
    if reason is not None:
        return JSONResponse(error_body(f"not ready: {reason}", "not_ready"), status_code=503, headers={"Retry-After": "1"})
    return JSONResponse({"status": "ready"})


@router.get("/openapi.json", include_in_schema=False)
async def openapi_document(request: Request) -> JSONResponse:
    """The API description; behind the API key like /v1/models unless TESSERA_OPENAPI_PUBLIC."""
    if not request.app.state.settings.openapi_public:
        request.app.state.keys.check(request.headers.get("authorization"))
    return JSONResponse(request.app.openapi())


@router.get("/docs", include_in_schema=False)
async def docs(request: Request) -> Response:
    """Swagger UI from the swagger-ui-bundle package's files: no CDN, so it works offline."""
    if not request.app.state.settings.openapi_public:
        request.app.state.keys.check(request.headers.get("authorization"))
    return get_swagger_ui_html(openapi_url="openapi.json", title="Tessera API", swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                               swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css", swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    if not request.app.state.settings.metrics_public:
        request.app.state.keys.check(request.headers.get("authorization"))
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
