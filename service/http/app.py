"""The app factory: ``create_app(settings)`` wires routes, errors and the event sink (Prometheus
metrics); its lifespan loads the models, starts their batchers (warm-up first) and moves the
server's ``Lifecycle`` on: ready once warm, and on shutdown draining (admitted requests finish
within the grace period), then stopped.

    uvicorn --factory service.http.app:create_app     # settings from TESSERA_* variables
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence

from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from tessera.service.http.auth import KeyCheck, load_keys
from tessera.service.pipeline.codecs import Limits
from tessera.service.http.demo import router as demo_router
from tessera.service.http.answers import install_error_handlers
from tessera.service.runtime.events import EventSink, Fanout
from tessera.service.runtime.interpreter_tuning import tune_for_serving
from tessera.service.runtime.lifecycle import Phase
from tessera.service.runtime.malloc_tuning import keep_freed_memory
from tessera.service.runtime.metrics import Metrics
from tessera.service.http.openapi import install_openapi
from tessera.service.batching.registry import Registry, load_registry
from tessera.service.http.front_door import FrontDoor
from tessera.service.http.routes import DOCS_ASSETS, router
from tessera.service.runtime.settings import Settings
from tessera.service.runtime.state import ServiceState, new_lifecycle

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Turns 32x32 game tiles into compact DC-AE latents and back.

`POST /v1/encode` takes a PNG tile or sprite sheet (sides multiple of 32, cut row-major),
uint8 npy tiles, or JSON with base64 images, and answers latents as JSON or float32 npy.
`POST /v1/decode` takes latents (npy or JSON) and answers a PNG sheet, uint8 npy tiles or
JSON with base64 PNG tiles. Errors are `{"detail": ..., "code": ...}`.
"""


def open_cache(settings: Settings, events: EventSink):
    """The latent cache the settings ask for, or None when it is disabled."""
    if not settings.redis_url and settings.cache_max_bytes == 0:
        return None
    from tessera.service.pipeline.cache import make_cache

    return make_cache(settings, events)


def serving(registry: Registry | None):
    """The lifespan of an app: load the models (unless ``registry`` has them), start their
    batchers, and on shutdown drain the lifecycle, then stop."""
    preloaded = registry

    @contextlib.asynccontextmanager
    async def lifespan(app: FrontDoor) -> AsyncIterator[None]:
        nonlocal preloaded
        app.check()  # nothing the front door would skip (tessera.service.http.front_door)
        start = time.monotonic()
        state: ServiceState = app.state.tessera
        settings = state.settings
        registry, preloaded = preloaded or load_registry(settings), None
        if state.lifecycle.phase is Phase.STOPPED:  # the app serves again
            state.lifecycle = new_lifecycle(settings)
        lifecycle = state.lifecycle
        for served in registry.models.values():
            info = served.describe(registry.default)
            state.metrics.add_model(served.name, info["arch"], info["compression_ratio"], served.key)
        cache = open_cache(settings, state.events)
        state.registry, state.cache = registry, cache
        keep_freed_memory()  # model calls reuse their activation memory (tessera.service.runtime.malloc_tuning)
        lifecycle.on_ready = lambda: logger.info(
            "ready on http://%s:%d: %d models (%s, default %s), %.1f s after the app started",
            settings.host, settings.port,
            len(registry.models), ", ".join(sorted(registry.models)), registry.default, time.monotonic() - start)
        registry.start(state.events, lifecycle)
        untune_gc = tune_for_serving()
        logger.info("serving %s (default %s); loaded in %.2f s, warming up",
                    sorted(registry.models), registry.default, time.monotonic() - start)
        try:
            yield
        finally:
            lifecycle.drain()
            left = await lifecycle.wait_idle(settings.shutdown_grace_s)
            lifecycle.stop()
            await registry.stop()
            if left:
                logger.warning("shut down with %d request(s) unfinished after %.1f s", left, settings.shutdown_grace_s)
            if cache is not None:
                await cache.close()
            state.registry = state.cache = None
            untune_gc()

    return lifespan


def create_app(settings: Settings | None = None, registry: Registry | None = None, sinks: Sequence[EventSink] = ()) -> FrontDoor:
    """A Tessera app; nothing is loaded until its lifespan starts.

    Raises ``ValueError`` when ``TESSERA_API_KEYS`` names an unreadable or empty key file.

    Args:
        settings: defaults to ``Settings()``, i.e. the ``TESSERA_*`` environment.
        registry: models already loaded by ``load_registry(settings)`` (``tessera serve``
            loads them first so that a bad checkpoint is reported before the server starts);
            it serves one lifespan. None: the lifespan loads them.
        sinks: event sinks that get every event besides the Prometheus metrics (``tessera.service.runtime.events``).
    """
    settings = settings if settings is not None else Settings()
    keys = KeyCheck(load_keys(settings.api_keys))  # a bad key file fails here, before serving
    metrics = Metrics()
    events: EventSink = Fanout(metrics, *sinks) if sinks else metrics
    app = FrontDoor(
        title="Tessera",
        version="0.1.0",
        summary="32x32 game tiles <-> DC-AE latents",
        description=DESCRIPTION,
        lifespan=serving(registry),
        redirect_slashes=False,  # a redirect would be built from the client's Host header
        openapi_url=None, docs_url=None, redoc_url=None,  # served by tessera.service.http.routes: local assets, key rule
    )
    limits = Limits(max_tiles=settings.max_tiles_per_request, max_pixels=settings.max_image_pixels)
    app.state.tessera = ServiceState(settings, keys, metrics, events, new_lifecycle(settings), limits)  # the one state
    install_error_handlers(app)
    app.include_router(router)
    app.include_router(demo_router)  # /demo, the try-it page (TESSERA_DEMO)
    install_openapi(app)
    app.mount(f"/{DOCS_ASSETS}", StaticFiles(directory=swagger_ui_path), name="docs-assets")
    return app
