"""One app's state: what it serves with, built once, by ``create_app``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from tessera.service.errors import NotReady
from tessera.service.pipeline.cache import LatentCache
from tessera.service.pipeline.codecs import Limits
from tessera.service.runtime.clock import Clock
from tessera.service.runtime.events import EventSink
from tessera.service.runtime.lifecycle import Lifecycle
from tessera.service.runtime.metrics import Metrics
from tessera.service.runtime.settings import Settings

if TYPE_CHECKING:
    from tessera.service.batching.registry import Registry
    from tessera.service.http.auth import KeyCheck


def new_lifecycle(settings: Settings) -> Lifecycle:
    return Lifecycle(max_in_flight=settings.max_requests_in_flight, max_uploads=settings.max_uploads_in_flight)


@dataclass
class ServiceState:
    """Everything one app serves with: its settings, API keys, Prometheus metrics and the event
    sink every part reports to (the metrics and any others), its lifecycle and request limits;
    while its lifespan serves, also its models and latent cache (None before and after)."""

    settings: Settings
    keys: KeyCheck
    metrics: Metrics
    events: EventSink
    lifecycle: Lifecycle
    limits: Limits
    registry: Registry | None = None
    cache: LatentCache | None = None

    def serving(self) -> ServiceState:
        """Itself while its models are loaded; ``NotReady`` (503) before and after."""
        if self.registry is None:
            raise NotReady("the service is starting; retry in a moment", retry_after_s=1)
        return self

    @property
    def clock(self) -> Clock:
        """The batchers' clock: request deadlines are on it."""
        return self.registry.clock
