"""What the pipeline needs while the app serves, set up by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from tessera.service.pipeline.cache import LatentCache
from tessera.service.runtime.clock import Clock
from tessera.service.pipeline.codecs import Limits
from tessera.service.runtime.events import EventSink
from tessera.service.runtime.lifecycle import Lifecycle
from tessera.service.batching.registry import Registry
from tessera.service.runtime.settings import Settings


@dataclass
class ServiceState:
    """One serving run of the app: its models, cache, limits, event sink and lifecycle."""

    settings: Settings
    registry: Registry
    events: EventSink
    cache: LatentCache | None
    limits: Limits
    lifecycle: Lifecycle

    @property
    def clock(self) -> Clock:
        """The batchers' clock: request deadlines are on it."""
        return self.registry.clock
