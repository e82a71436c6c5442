"""In-process apps: ``create_app`` under a ``TestClient`` (lifespan running, models warm), with a
``RecordingSink`` beside the Prometheus metrics."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from fastapi.testclient import TestClient

from tessera.service.http.app import create_app
from tessera.service.runtime.clock import MONOTONIC, Clock
from tessera.service.batching.registry import load_registry
from tessera.service.runtime.settings import Settings
from tessera.testing.events import RecordingSink
from tessera.testing.waiting import wait_until


def settings_for(checkpoint_dir: Path, **overrides) -> Settings:
    options = {"checkpoints": (checkpoint_dir,), "device": "cpu", "torch_threads": 1, "max_batch_tiles": 16}
    options.update(overrides)
    return Settings(**options)


@contextmanager
def serving(checkpoint_dir: Path, clock: Clock = MONOTONIC, **overrides):
    """A TestClient on a fresh app, ready; ``client.events`` is its ``RecordingSink``. The
    batchers run on ``clock`` (a ``FakeClock`` holds batch windows open until advanced)."""
    settings = settings_for(checkpoint_dir, **overrides)
    events = RecordingSink()
    app = create_app(settings, registry=load_registry(settings, clock), sinks=[events])
    with TestClient(app) as client:
        client.events = events
        wait_until(lambda: client.get("/readyz").status_code == 200, what="the app is ready (/readyz 200)")
        yield client


def batcher(client, op: str = "encode"):
    """The named batcher of the default model of the app behind ``client``."""
    model = client.app.state.tessera.registry.get(None)
    return model.encoder if op == "encode" else model.decoder
