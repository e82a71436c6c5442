"""A clock that moves only when told: batch windows, deadlines, TTLs and breaker cooldowns in
tests, without sleeping and without depending on how busy the machine is."""

from __future__ import annotations

import threading
from collections.abc import Callable

from tessera.service.runtime.clock import Clock


class FakeClock(Clock):
    """``now()`` is the sum of every ``advance()`` so far, from 0 (summed in nanoseconds, so that
    advancing by 0.02 and 0.08 lands exactly where advancing by 0.1 does). Threads waiting on it
    (``wait_for``) wake when what they wait for happens or when an advance reaches their
    deadline; ``deadlines`` tells a test what the waiting threads wait for."""

    def __init__(self) -> None:
        self._ns = 0
        self._now = 0.0
        self._lock = threading.Lock()
        self._waiting: dict[int, tuple[threading.Condition, float | None]] = {}

    def now(self) -> float:
        return self._now

    __call__ = now

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._ns += round(seconds * 1e9)
            self._now = self._ns / 1e9
            conditions = {id(c): c for c, _ in self._waiting.values()}.values()
        for condition in conditions:  # outside our lock: a waiter holds its condition, then takes ours
            with condition:
                condition.notify_all()

    @property
    def deadlines(self) -> list[float | None]:
        """The deadline of every thread waiting now (None: waiting without one)."""
        with self._lock:
            return [deadline for _, deadline in self._waiting.values()]

    def wait_for(self, condition: threading.Condition, predicate: Callable[[], bool], deadline: float | None) -> bool:
        me = threading.get_ident()
        try:
            while True:
                with self._lock:  # before looking at the time: an advance after this notifies us
                    self._waiting[me] = (condition, deadline)
                if predicate():
                    return True
                if deadline is not None and self._now >= deadline:
                    return False
                condition.wait()
        finally:
            with self._lock:
                self._waiting.pop(me, None)
