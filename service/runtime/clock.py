"""Time as a parameter: code that waits or expires takes a ``Clock``, so its tests can drive a
fake one (``tessera.testing.clock.FakeClock``) instead of sleeping.

A clock tells the time and waits on a ``threading.Condition`` until a moment of that time; the
real one is ``time.monotonic``. It is also callable, so it fits where a plain ``() -> float``
is expected (``CircuitBreaker(clock=)``, ``MemoryLatentCache(clock=)``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class Clock:
    """``time.monotonic()`` and waiting against it."""

    def now(self) -> float:
        return time.monotonic()

    __call__ = now

    def wait_for(self, condition: threading.Condition, predicate: Callable[[], bool], deadline: float | None) -> bool:
        """With ``condition``'s lock held: wait until ``predicate()`` is true or this clock reaches
        ``deadline`` (None: no limit); the last value of ``predicate()``."""
        if deadline is None:
            return condition.wait_for(predicate)
        return condition.wait_for(predicate, max(0.0, deadline - self.now()))


MONOTONIC = Clock()
