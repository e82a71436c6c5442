"""Waiting on a condition with a deadline: the only way tests synchronise with threads,
processes and event loops. A busy machine makes the wait longer, never the test wrong."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
PATIENCE_S = 60.0  # a condition that takes longer than this on a busy machine is a failure


class _Deadline:
    def __init__(self, condition: Callable[[], T], timeout_s: float, what: str | None) -> None:
        self.condition, self.timeout_s = condition, timeout_s
        self.what = what or getattr(condition, "__name__", repr(condition))
        self.at = time.monotonic() + timeout_s

    def met(self) -> T | None:
        """The condition's value when truthy; None while there is time; AssertionError after."""
        value = self.condition()
        if value:
            return value
        if time.monotonic() > self.at:
            raise AssertionError(f"not true within {self.timeout_s:g} s: {self.what}")
        return None


def wait_until(condition: Callable[[], T], timeout_s: float = PATIENCE_S, what: str | None = None,
               interval_s: float = 0.01) -> T:
    """Poll ``condition()`` until it is truthy and return its value; ``AssertionError`` naming
    ``what`` (or the condition) once ``timeout_s`` passed."""
    deadline = _Deadline(condition, timeout_s, what)
    while (value := deadline.met()) is None:
        time.sleep(interval_s)
    return value


async def until(condition: Callable[[], T], timeout_s: float = PATIENCE_S, what: str | None = None) -> T:
    """``wait_until`` for coroutines: polls between turns of the event loop."""
    deadline = _Deadline(condition, timeout_s, what)
    while (value := deadline.met()) is None:
        await asyncio.sleep(0.002)
    return value
