"""The bare-framework floor of ``bench.cpu``: FastAPI under uvicorn, one route that reads the same
single-tile npy body as ``/v1/encode`` and answers a fixed npy latent, nothing else (no
middleware, dependencies, decoding, cache, batching or model).

    python -m uvicorn --factory bench.floor_app:create_app --port 8001 --no-access-log

What ``tessera serve`` spends per request beyond this and beyond its model is the service's own
cost (docs/benchmarks.md, *CPU per request*).
"""

from __future__ import annotations

import io

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response

NPY = "application/x-npy"


def answer() -> bytes:
    """What the server answers a single-tile encode of the default ratio-48 model with: float32
    [1, 4, 4, 4] as npy."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((1, 4, 4, 4), np.float32))
    return buffer.getvalue()


def create_app() -> FastAPI:
    body = answer()
    headers = {"X-Tessera-Model": "floor", "X-Tessera-Cached": "0", "X-Tessera-Latent-Shape": "4,4,4"}
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/v1/encode")
    async def encode(request: Request) -> Response:
        await request.body()
        return Response(body, media_type=NPY, headers=headers)

    @app.get("/readyz")
    async def readyz() -> dict:
        return {"status": "ready"}

    return app
