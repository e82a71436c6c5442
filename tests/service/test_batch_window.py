"""The batch window runs from the first tile's arrival, not from when the worker takes it."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from service.batching import Slice, _Job, collect_batch


def _slice(n: int, enqueued_ago_s: float = 0.0) -> Slice:
    job = _Job(np.zeros((n, 1), np.uint8), asyncio.get_running_loop().create_future(), time.monotonic() + 60)
    job.enqueued_at -= enqueued_ago_s
    return Slice(job, 0, n)


def test_tiles_that_waited_out_the_window_go_at_once_with_what_is_queued():
    async def go():
        queue: asyncio.Queue[Slice] = asyncio.Queue()
        queue.put_nowait(_slice(2, enqueued_ago_s=1.0))  # queued while the model was busy
        queue.put_nowait(_slice(3))
        start = time.monotonic()
        batch, carry = await collect_batch(queue, 8, max_wait_s=0.5)
        assert [s.size for s in batch] == [2, 3] and carry is None
        assert time.monotonic() - start < 0.1  # no second wait for more tiles

    asyncio.run(go())


def test_fresh_first_tile_still_waits_for_company():
    async def go():
        queue: asyncio.Queue[Slice] = asyncio.Queue()
        queue.put_nowait(_slice(1))

        async def later():
            await asyncio.sleep(0.05)
            queue.put_nowait(_slice(1))

        feeder = asyncio.ensure_future(later())
        batch, _ = await collect_batch(queue, 8, max_wait_s=0.3)
        await feeder
        assert [s.size for s in batch] == [1, 1]

    asyncio.run(go())


def test_carry_of_an_old_request_does_not_wait():
    async def go():
        queue: asyncio.Queue[Slice] = asyncio.Queue()
        _, rest = _slice(10, enqueued_ago_s=1.0).split(8)
        start = time.monotonic()
        batch, carry = await collect_batch(queue, 8, max_wait_s=0.5, carry=rest)
        assert [(s.start, s.stop) for s in batch] == [(8, 10)] and carry is None
        assert time.monotonic() - start < 0.1

    asyncio.run(go())
