"""The warm-up a model call gets before it serves: once at every batch size it will see.

The first call at a batch size leaves long-lived allocations behind (oneDNN primitives and their
buffers, in the calling thread's malloc arena). Made while serving, they scattered through the
arena until, in about one server process in five after a sweep of batch sizes, each call's
activations got a sub-heap of their own that glibc unmapped after every call: ~58 page faults
per tile and ~30% slower model calls. Made here, in the model thread before any request, they
stay out of the way (no such process in ten). The price is memory: ~2.5 MiB per batch size for
dcae-s48 on a CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import numpy as np

logger = logging.getLogger(__name__)


def warm_up(name: str, infer: Callable[[np.ndarray], np.ndarray], rows: np.ndarray | None, lock: threading.Lock) -> str | None:
    """One call with every row of ``rows`` (it proves a full batch fits in memory), then one at
    each smaller batch size, under ``lock``; None, or why it failed. Call it in the thread
    that will make the model calls."""
    if rows is None:
        return None
    start = time.monotonic()
    try:
        with lock:
            infer(rows)
            for n in range(1, len(rows)):
                infer(rows[:n])
    except Exception as exc:  # the server stays up, not ready, and says why
        error = f"{type(exc).__name__}: {exc}"
        logger.error("%s: warm-up failed: %s", name, error)
        return error
    logger.info("%s: warmed up at batch sizes 1 to %d in %.3f s", name, len(rows), time.monotonic() - start)
    return None
