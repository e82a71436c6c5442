"""What the pipeline needs while the app serves, set up by the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass

from service.cache import LatentCache
from service.clock import Clock
from service.codecs import Limits
from service.events import EventSink
from service.lifecycle import Lifecycle
from service.registry import Registry
from service.settings import Settings


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
