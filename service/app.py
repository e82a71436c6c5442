"""The app factory: ``create_app(settings)`` wires routes, errors and metrics; its lifespan
loads the models, starts their batchers (warm-up first) and, on shutdown, drains them.

    uvicorn --factory service.app:create_app     # settings from TESSERA_* variables
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from service.auth import KeyCheck, load_keys
from service.codecs import Limits
from service.errors import install_error_handlers
from service.interpreter_tuning import tune_for_serving
from service.malloc_tuning import keep_freed_memory
from service.metrics import Metrics, RequestMetricsMiddleware
from service.openapi import install_openapi
from service.registry import Registry, load_registry
from service.routes import DOCS_ASSETS, ServiceState, router
from service.settings import Settings

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Turns 32x32 game tiles into compact DC-AE latents and back.

`POST /v1/encode` takes a PNG tile or sprite sheet (sides multiple of 32, cut row-major),
uint8 npy tiles, or JSON with base64 images, and answers latents as JSON or float32 npy.
`POST /v1/decode` takes latents (npy or JSON) and answers a PNG sheet, uint8 npy tiles or
JSON with base64 PNG tiles. Errors are `{"detail": ..., "code": ...}`.
"""


def open_cache(settings: Settings, metrics: Metrics):
    """The latent cache the settings ask for, or None when it is disabled."""
    if not settings.redis_url and settings.cache_max_bytes == 0:
        return None
    from service.cache import make_cache

    return make_cache(settings, on_lookup=metrics.cache_lookup, on_error=metrics.cache_error)


def create_app(settings: Settings | None = None, registry: Registry | None = None) -> FastAPI:
    """A Tessera app; nothing is loaded until its lifespan starts.

    Raises ``ValueError`` when ``TESSERA_API_KEYS`` names an unreadable or empty key file.

    Args:
        settings: defaults to ``Settings()``, i.e. the ``TESSERA_*`` environment.
        registry: models already loaded by ``load_registry(settings)`` (``tessera serve``
            loads them first so that a bad checkpoint is reported before the server starts);
            it serves one lifespan. None: the lifespan loads them.
    """
    settings = settings if settings is not None else Settings()
    keys = KeyCheck(load_keys(settings.api_keys))  # a bad key file fails here, before serving
    metrics = Metrics()
    preloaded = registry

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal preloaded
        start = time.monotonic()
        registry, preloaded = preloaded or load_registry(settings), None
        registry.observe(metrics.batch_observer)
        for served in registry.models.values():
            info = served.describe(registry.default)
            metrics.add_model(served.name, info["arch"], info["compression_ratio"], served.key)
        cache = open_cache(settings, metrics)
        limits = Limits(max_tiles=settings.max_tiles_per_request, max_pixels=settings.max_image_pixels)
        state = ServiceState(settings, registry, metrics, cache, limits)
        app.state.tessera = state
        keep_freed_memory()  # model calls reuse their activation memory (service.malloc_tuning)
        registry.start()
        untune_gc = tune_for_serving()
        logger.info(
            "serving %s (default %s); loaded in %.2f s, warming up",
            sorted(registry.models), registry.default, time.monotonic() - start,
        )
        try:
            yield
        finally:
            state.draining = True
            left = await registry.drain(settings.shutdown_grace_s)
            if left:
                logger.warning("shut down with %d request(s) unfinished after %.1f s", left, settings.shutdown_grace_s)
            if cache is not None:
                await cache.close()
            app.state.tessera = None
            untune_gc()

    app = FastAPI(
        title="Tessera",
        version="0.1.0",
        summary="32x32 game tiles <-> DC-AE latents",
        description=DESCRIPTION,
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client's Host header
        openapi_url=None, docs_url=None, redoc_url=None,  # served by service.routes: local assets, key rule
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.keys = keys
    app.state.tessera = None
    install_error_handlers(app)
    app.include_router(router)
    install_openapi(app)
    app.mount(f"/{DOCS_ASSETS}", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    return app
