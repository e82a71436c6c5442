"""The batch window runs from the first tile's arrival, not from when the model thread takes it."""

from __future__ import annotations

import threading
import time

import numpy as np

from service.batching import Slice, TileQueue, _Job, collect_batch


class _Pending:
    def done(self) -> bool:
        return False


def _slice(n: int, enqueued_ago_s: float = 0.0) -> Slice:
    job = _Job(np.zeros((n, 1), np.uint8), _Pending(), time.monotonic() + 60)
    job.enqueued_at -= enqueued_ago_s
    return Slice(job, 0, n)


def test_tiles_that_waited_out_the_window_go_at_once_with_what_is_queued():
    queue = TileQueue()
    queue.put(_slice(2, enqueued_ago_s=1.0))  # queued while the model was busy
    queue.put(_slice(3))
    start = time.monotonic()
    batch, carry = collect_batch(queue, 8, max_wait_s=0.5)
    assert [s.size for s in batch] == [2, 3] and carry is None
    assert time.monotonic() - start < 0.1  # no second wait for more tiles


def test_fresh_first_tile_still_waits_for_company():
    queue = TileQueue()
    queue.put(_slice(1))
    feeder = threading.Timer(0.05, lambda: queue.put(_slice(1)))
    feeder.start()
    batch, _ = collect_batch(queue, 8, max_wait_s=0.3)
    feeder.join()
    assert [s.size for s in batch] == [1, 1]


def test_carry_of_an_old_request_does_not_wait():
    _, rest = _slice(10, enqueued_ago_s=1.0).split(8)
    start = time.monotonic()
    batch, carry = collect_batch(TileQueue(), 8, max_wait_s=0.5, carry=rest)
    assert [(s.start, s.stop) for s in batch] == [(8, 10)] and carry is None
    assert time.monotonic() - start < 0.1
