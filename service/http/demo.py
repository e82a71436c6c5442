"""``/demo``: a page to try the service in a browser (``TESSERA_DEMO``, on by default).

    GET /demo                                   the page (static HTML; its script and style under /demo/assets/)
    GET /demo/config.json                       what the page can use: vendored onnxruntime-web, ONNX export
    GET /demo/vendor/onnxruntime-web/{file}     onnxruntime-web, vendored at build time (scripts/vendor_onnxruntime_web.py)
    GET /demo/models/{name}/decoder.onnx        the model's decoder as ONNX: 503 + Retry-After while it is built

The page cuts a sprite sheet into tiles in the browser, round-trips it through ``/v1/encode`` and
``/v1/decode`` (with the key the user types, as ``Authorization: Bearer``), and mixes two tiles'
latents, decoded in the browser by onnxruntime-web when it can, else by ``/v1/decode``. Every
response of the page carries a Content-Security-Policy: scripts from this server only (no inline
script), WebAssembly compilation allowed for onnxruntime-web, requests to this server only.

The decoder file holds the model's weights, so it follows the key rule of ``/v1/*``; the page's
files hold nothing about the server and are public.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from tessera.service.http.front_door import DECODER
from tessera.service.http.demo_onnx import DecoderFiles, ExportFailed, export_unavailable
from tessera.service.errors import TesseraError, Unavailable
from tessera.tiles import DECODERS

Decoder = Annotated[Literal[DECODERS], Query(description=DECODER.description)]  # the decode endpoint's parameter

STATIC = Path(__file__).resolve().parents[1] / "static"
PAGE = STATIC / "demo"
VENDOR = STATIC / "vendor" / "onnxruntime-web"
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",  # module scripts are refused under another type
    ".css": "text/css; charset=utf-8",
    ".wasm": "application/wasm",  # lets the browser compile while it downloads
    ".json": "application/json",
}
ASSETS = ("demo.js", "demo.css")
ONNX = "application/octet-stream"
BUILD_RETRY_S = 2
CSP = "; ".join((
    "default-src 'none'",
    "script-src 'self' 'wasm-unsafe-eval'",  # onnxruntime-web compiles its .wasm
    "connect-src 'self'",
    "img-src 'self' data: blob:",
    "style-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    "frame-ancestors 'none'",
))
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate (ETag): a new build's files are seen at once
}


class DemoNotFound(TesseraError):
    """404 ``not_found``; ``onnx_unavailable`` where a model has no decoder ONNX here (the page
    then decodes on the server)."""

    status = 404
    code = "not_found"


async def demo_enabled(request: Request) -> None:
    if not request.app.state.tessera.settings.demo:
        raise DemoNotFound("the demo page is turned off on this server (TESSERA_DEMO=false)")


router = APIRouter(prefix="/demo", include_in_schema=False, dependencies=[Depends(demo_enabled)])


def _file(path: Path) -> FileResponse:
    if not path.is_file():
        raise DemoNotFound(f"no file {path.name!r} in this build of the demo page")
    return FileResponse(path, media_type=MEDIA_TYPES.get(path.suffix, "application/octet-stream"), headers=HEADERS)


def vendored() -> dict | None:
    """The manifest of the vendored onnxruntime-web when all its files are present, else None."""
    try:
        manifest = json.loads((VENDOR / "manifest.json").read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not all((VENDOR / name).is_file() for name in files):
        return None
    return manifest


@router.get("")
async def page() -> FileResponse:
    return _file(PAGE / "index.html")


@router.get("/assets/{name}")
async def asset(name: str) -> FileResponse:
    if name not in ASSETS:
        raise DemoNotFound(f"no demo asset {name!r}")
    return _file(PAGE / name)


@router.get("/config.json")
async def config() -> JSONResponse:
    manifest = vendored()
    runtime = None if manifest is None else {"version": manifest.get("version"), "script": "ort.wasm.min.js"}
    body = {
        "onnxruntime_web": runtime,
        "onnxruntime_web_missing": None if runtime else "onnxruntime-web is not vendored in this build "
                                                        "(python3 scripts/vendor_onnxruntime_web.py, or make venv)",
        "onnx_export_missing": export_unavailable(),
    }
    return JSONResponse(body, headers=HEADERS)


@router.get("/vendor/onnxruntime-web/{name}")
async def vendor_file(name: str) -> FileResponse:
    manifest = vendored()
    if manifest is None or name not in manifest["files"]:  # only the files the manifest lists
        raise DemoNotFound(f"onnxruntime-web file {name!r} is not vendored in this build")
    return _file(VENDOR / name)


@router.get("/models/{name}/decoder.onnx")
async def decoder_onnx(name: str, request: Request, decoder: Decoder = DECODER.default) -> Response:
    """The model's decoder (``?decoder=sharp``: its sharp one): ``latents`` float32 [N, *latent_shape]
    -> ``tiles`` float32 [N, 3, 32, 32] in [0, 1]. Exported on first request (503 with Retry-After
    until built)."""
    app = request.app
    app.state.tessera.keys.check(request.headers.get("authorization"))
    state = app.state.tessera.serving()
    served = state.registry.get(name)  # 404 unknown_model, listing the loaded ones
    variant = served.variant(decoder)  # 404 unknown_decoder, listing the model's
    missing = export_unavailable()
    if missing is not None:
        raise DemoNotFound(missing, code="onnx_unavailable")
    files = getattr(app.state, "demo_decoders", None)
    if files is None:
        files = app.state.demo_decoders = DecoderFiles(threads=state.settings.torch_threads)
    try:
        data = files.get(variant.path, variant.key)
    except ExportFailed as exc:
        raise DemoNotFound(f"no decoder ONNX for {name!r}: {exc}", code="onnx_unavailable") from None
    if data is None:
        raise Unavailable(f"the decoder ONNX of {name!r} is being exported; retry in a few seconds",
                          retry_after_s=BUILD_RETRY_S, code="building")
    etag = f'"{variant.key}"'
    headers = {**HEADERS, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=ONNX, headers=headers)
