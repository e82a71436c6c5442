"""Garbage collector settings while the app serves.

Two costs showed up when profiling a loaded server (64 concurrent single-tile encodes):

- Full collections scanned every object of torch, the models and the libraries (~250,000
  objects, ~0.2 s per pass, several per minute under load): a latency spike each time.
  ``gc.freeze()`` after start-up moves them to a generation the collector never scans.
- Young collections ran every 700 net allocations, and 64 requests in flight keep about that
  many young objects alive, so the collector ran every few requests (~10% of the event loop's
  CPU) and found almost nothing: request objects die by reference counting. A higher first
  threshold lets them die before any scan.

Both are undone when the app stops (tests create many apps in one process).
"""

from __future__ import annotations

import gc
from collections.abc import Callable

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)


def tune_for_serving(young_threshold: int = YOUNG_THRESHOLD) -> Callable[[], None]:
    """Freeze what exists now and raise the young threshold; returns the function that undoes it."""
    before = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(young_threshold, before[0]), *before[1:])

    def undo() -> None:
        gc.set_threshold(*before)
        gc.unfreeze()

    return undo
