"""Interpreter settings while the app serves: the garbage collector and the GIL switch interval.

Found by profiling a loaded server (the measurements: docs/benchmarks.md, "server, GC" and "GIL
switch interval"):

- Full collections scanned every object of torch, the models and the libraries: a latency
  spike each time. ``gc.freeze()`` after start-up moves them to a generation the collector
  never scans.
- Young collections ran every 700 net allocations, about as many young objects as the requests
  in flight keep alive, so the collector ran every few requests and found almost nothing:
  request objects die by reference counting. A higher first threshold lets them die before any
  scan.
- The model thread gives the GIL up for each model call and needs it back to hand the result
  over. While the event loop works through a burst of requests it keeps the GIL until the
  interpreter's switch interval runs out, and the model sits idle that long, once or twice per
  batch; a shorter interval shortens the wait. A forced switch happens only when another
  thread waits, so an idle model thread costs the event loop nothing.

All of it is undone when the app stops (tests create many apps in one process).
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable

YOUNG_THRESHOLD = 10_000  # allocations between young collections (CPython's default: 700)
SWITCH_INTERVAL_S = 0.0005  # longest a thread keeps the GIL while another waits (CPython's default: 0.005)


def tune_for_serving(young_threshold: int = YOUNG_THRESHOLD, switch_interval_s: float = SWITCH_INTERVAL_S) -> Callable[[], None]:
    """Freeze what exists now, raise the young threshold and shorten the switch interval;
    returns the function that undoes it."""
    before, interval_before = gc.get_threshold(), sys.getswitchinterval()
    gc.collect()
    gc.freeze()
    gc.set_threshold(max(young_threshold, before[0]), *before[1:])
    sys.setswitchinterval(switch_interval_s)

    def undo() -> None:
        sys.setswitchinterval(interval_before)
        gc.set_threshold(*before)
        gc.unfreeze()

    return undo
