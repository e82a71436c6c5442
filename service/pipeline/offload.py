"""Work on request bodies that could hold the event loop, done in a small thread pool instead.

Decoding an image, a large npy array or a JSON body of base64 images, and hashing many tiles,
run in ``DECODE_THREADS`` threads (Pillow, zlib and hashlib release the GIL while they work).
The event loop waits for the result at most ``timeout_s``: a body that takes longer is refused
with 422 ``decode_timeout``, and its thread finishes in the background (the structure checks in
``tessera.service.pipeline.codecs`` bound how long that can be).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from tessera.service.errors import InvalidInput

T = TypeVar("T")
DECODE_THREADS = min(4, os.cpu_count() or 1)
INLINE_BYTES = 1 << 20  # npy bodies up to this decode faster than a hand-off to a thread
INLINE_TILES = 256  # hashing this many tiles takes well under a millisecond

_pool = ThreadPoolExecutor(max_workers=DECODE_THREADS, thread_name_prefix="tessera-decode")


async def in_pool(fn: Callable[[], T]) -> T:
    """``fn()`` in the decode pool, however long it takes (for work that cannot be made slow)."""
    return await asyncio.get_running_loop().run_in_executor(_pool, fn)


async def off_loop(fn: Callable[[], T], timeout_s: float, what: str) -> T:
    """``fn()`` in the decode pool; 422 ``decode_timeout`` when it is not done within ``timeout_s``."""
    future = asyncio.get_running_loop().run_in_executor(_pool, fn)
    try:
        return await asyncio.wait_for(asyncio.shield(future), timeout_s)
    except TimeoutError:
        future.add_done_callback(_discard)  # its result or error is no longer wanted
        raise InvalidInput(
            f"{what} took longer than {timeout_s:g} s to decode (TESSERA_DECODE_TIMEOUT_S); send a simpler file, "
            f"e.g. a plain PNG", code="decode_timeout",
        ) from None


def _discard(future: asyncio.Future) -> None:
    if not future.cancelled():
        future.exception()  # retrieved, so asyncio does not log it as never retrieved
