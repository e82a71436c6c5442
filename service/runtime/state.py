"""What the pipeline needs while the app serves, set up by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from service.pipeline.cache import LatentCache
from service.runtime.clock import Clock
from service.pipeline.codecs import Limits
from service.runtime.events import EventSink
from service.runtime.lifecycle import Lifecycle
from service.batching.registry import Registry
from service.runtime.settings import Settings


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
