"""glibc malloc settings for a serving process.

A model call allocates and frees a few megabytes of activations. With glibc's default,
adaptive thresholds, whether that memory stays in the heap for the next call or goes back to
the kernel (and is faulted in again, page by page) depends on the allocation history: some
processes faulted on every call and ran slower (docs/benchmarks.md, "model call"). Fixed
thresholds keep blocks up to 32 MiB in the heap and trim the heap only when more than 256 MiB
at its top are free, so every process reuses its activation memory. The cost is memory that
stays mapped after a burst.

Nothing happens where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

# mallopt parameter numbers, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's largest: blocks below it come from the heap
TRIM_THRESHOLD = 256 * 1024 * 1024  # free memory at the heap's top kept for the next calls


def keep_freed_memory() -> bool:
    """Set fixed mmap and trim thresholds; True if glibc took both."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS): leave malloc alone
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not ok:
        logger.debug("mallopt refused the thresholds; malloc keeps its adaptive ones")
    return ok
