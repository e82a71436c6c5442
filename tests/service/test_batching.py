"""The batching worker on its own, with a numpy stand-in for the model."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.batching import Batcher, QueueClosed, Slice, TileQueue, _Job, collect_batch, dedupe
from service.errors import ClientDisconnected, DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown


def run(coro):
    return asyncio.run(coro)


class Recorder:
    """A model stand-in: doubles its rows and remembers every call's size."""

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.calls: list[np.ndarray] = []
        self.delay_s = delay_s
        self.fail = fail
        self.started = threading.Event()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.started.set()
        self.calls.append(rows.copy())
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("boom")
        return rows.astype(np.float32) * 2

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


def make(infer, **kw) -> Batcher:
    """A batcher whose window always runs its full length (tests of the early close say otherwise)."""
    options = {"max_batch_tiles": 8, "max_wait_s": 0.05, "max_queue_tiles": 64, "close_early": False}
    options.update(kw)
    return Batcher("test/encode", infer, **options)


def later(seconds: float = 10.0) -> float:
    return time.monotonic() + seconds


# -- collect_batch (runs in the model thread) ----------------------------------------------


class _Done:
    """A stand-in for a request's future: collect_batch only asks whether it is done."""

    def __init__(self) -> None:
        self.cancelled = False

    def done(self) -> bool:
        return self.cancelled


def _slice(n: int, deadline: float | None = None, enqueued_ago_s: float = 0.0) -> Slice:
    job = _Job(rows(0, n), _Done(), deadline or later())
    job.enqueued_at -= enqueued_ago_s
    return Slice(job, 0, n)


def _queue(*pieces: Slice) -> TileQueue:
    queue = TileQueue()
    for piece in pieces:
        queue.put(piece)
    return queue


def test_collect_closes_at_max_tiles_and_carries_the_rest():
    queue = _queue(_slice(3), _slice(4), _slice(5))
    batch, carry = collect_batch(queue, 8, max_wait_s=10)
    assert [s.size for s in batch] == [3, 4, 1]
    assert carry is not None and (carry.start, carry.stop) == (1, 5)
    batch, carry = collect_batch(queue, 8, max_wait_s=0.01, carry=carry)
    assert [(s.start, s.stop) for s in batch] == [(1, 5)] and carry is None


def _collect_while(feed, queue: TileQueue, max_wait_s: float) -> tuple[list[Slice], Slice | None, float]:
    """collect_batch on ``queue`` while ``feed`` puts slices from another thread; also the seconds it took."""
    feeder = threading.Thread(target=feed)
    start = time.monotonic()
    feeder.start()
    batch, carry = collect_batch(queue, 8, max_wait_s=max_wait_s)
    elapsed = time.monotonic() - start
    feeder.join()
    return batch, carry, elapsed


def test_collect_closes_max_wait_after_first_tile():
    queue = TileQueue()

    def feed():
        time.sleep(0.1)  # the first tile arrives late: the wait starts then
        queue.put(_slice(1))
        time.sleep(0.02)
        queue.put(_slice(1))

    batch, carry, elapsed = _collect_while(feed, queue, max_wait_s=0.1)
    assert [s.size for s in batch] == [1, 1] and carry is None
    assert 0.18 <= elapsed < 0.5


def test_collect_returns_as_soon_as_the_batch_is_full():
    queue = _queue(_slice(3))
    batch, carry, elapsed = _collect_while(lambda: (time.sleep(0.05), queue.put(_slice(5))), queue, max_wait_s=5)
    assert [s.size for s in batch] == [3, 5] and carry is None
    assert elapsed < 1  # woken by the full batch, not by the 5 s window


def test_tiles_that_waited_out_the_window_go_at_once_with_what_is_queued():
    """The window runs from the first tile's arrival, not from when the model thread takes it."""
    queue = _queue(_slice(2, enqueued_ago_s=1.0), _slice(3))  # the first queued while the model was busy
    start = time.monotonic()
    batch, carry = collect_batch(queue, 8, max_wait_s=0.5)
    assert [s.size for s in batch] == [2, 3] and carry is None
    assert time.monotonic() - start < 0.1  # no second wait for more tiles


def test_fresh_first_tile_still_waits_for_company():
    queue = _queue(_slice(1))
    batch, _, _ = _collect_while(lambda: (time.sleep(0.05), queue.put(_slice(1))), queue, max_wait_s=0.3)
    assert [s.size for s in batch] == [1, 1]


def test_carry_of_an_old_request_does_not_wait():
    _, rest = _slice(10, enqueued_ago_s=1.0).split(8)
    start = time.monotonic()
    batch, carry = collect_batch(TileQueue(), 8, max_wait_s=0.5, carry=rest)
    assert [(s.start, s.stop) for s in batch] == [(8, 10)] and carry is None
    assert time.monotonic() - start < 0.1


def test_collect_with_zero_wait_takes_what_is_queued():
    batch, _ = collect_batch(_queue(_slice(2), _slice(2), _slice(2)), 8, max_wait_s=0)
    assert [s.size for s in batch] == [2, 2, 2]


def test_collect_skips_abandoned_requests():
    dead, live = _slice(3), _slice(2)
    dead.job.future.cancelled = True
    batch, _ = collect_batch(_queue(dead, live), 8, max_wait_s=0)
    assert batch == [live]


def test_collect_rejects_empty_batches():
    with pytest.raises(ValueError, match="max_tiles"):
        collect_batch(TileQueue(), 0, 0.1)


def test_collect_ends_when_the_queue_closes():
    queue = TileQueue()
    threading.Timer(0.05, queue.close).start()
    with pytest.raises(QueueClosed):
        collect_batch(queue, 8, max_wait_s=0.1)


def test_dedupe_keeps_first_seen_order():
    data = np.array([[1], [2], [1], [3], [2]], dtype=np.uint8)
    unique, inverse = dedupe(data)
    assert unique[:, 0].tolist() == [1, 2, 3]
    assert np.array_equal(unique[inverse], data)


# -- Batcher -----------------------------------------------------------------------------------


def test_concurrent_requests_share_one_model_call():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        results = await asyncio.gather(*(batcher.submit(rows(i, 1), deadline=later()) for i in range(5)))
        await batcher.stop()
        return batcher, results

    batcher, results = run(go())
    assert model.sizes == [5]
    assert batcher.stats.batches == 1 and batcher.stats.batch_sizes == {5: 1}
    assert [r[0, 0] for r in results] == [0, 2, 4, 6, 8]


def test_large_request_is_split_and_reassembled_in_order():
    model = Recorder()

    async def go():
        batcher = make(model, max_batch_tiles=4, max_wait_s=0)
        batcher.start()
        big, small = await asyncio.gather(
            batcher.submit(rows(0, 10), deadline=later()), batcher.submit(rows(100, 3), deadline=later())
        )
        await batcher.stop()
        return big, small

    big, small = run(go())
    assert model.sizes == [4, 4, 4, 1]  # the small request fills the last batch of the big one
    assert big[:, 0].tolist() == [2 * i for i in range(10)]
    assert small[:, 0].tolist() == [200, 202, 204]


def test_identical_rows_in_a_batch_are_computed_once():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.1)
        batcher.start()
        same = np.zeros((3, 1), dtype=np.float32)
        out = await asyncio.gather(batcher.submit(same, deadline=later()), batcher.submit(same[:2], deadline=later()))
        await batcher.stop()
        return batcher, out

    batcher, out = run(go())
    assert model.sizes == [1]
    assert batcher.stats.tiles == 5 and batcher.stats.unique_tiles == 1
    assert out[0].shape == (3, 1) and out[1].shape == (2, 1)


def test_queue_full_is_refused_with_retry_after():
    model = Recorder(delay_s=0.3)

    async def go():
        batcher = make(model, max_batch_tiles=4, max_queue_tiles=6, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0, 4), deadline=later()))
        await asyncio.to_thread(model.started.wait, 5)  # the worker is busy with the first batch
        second = asyncio.ensure_future(batcher.submit(rows(0, 5), deadline=later()))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(rows(0, 2), deadline=later())
        await asyncio.gather(first, second)
        await batcher.stop()
        return batcher, info.value

    batcher, error = run(go())
    assert error.status == 503 and int(error.headers["Retry-After"]) >= 1
    assert "5 tiles are queued (limit 6)" in error.detail
    assert batcher.stats.rejected["queue_full"] == 2


def test_deadline_gives_504_and_tiles_are_not_computed():
    model = Recorder(delay_s=0.3)

    async def go():
        batcher = make(model, max_batch_tiles=2, max_wait_s=0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(rows(0, 2), deadline=later()))
        await asyncio.to_thread(model.started.wait, 5)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(50, 2), deadline=later(0.05))
        await busy
        await asyncio.sleep(0.05)
        assert batcher.queued_tiles == 0
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0, 1]]
    assert batcher.stats.rejected["deadline"] == 2


def test_deadline_passed_while_the_batch_was_open_is_not_computed():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.3)
        batcher.start()
        slow = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later()))
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(9, 1), deadline=later(0.1))
        await slow
        await batcher.stop()

    run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]


def test_disconnected_client_tiles_are_skipped():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        gone = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.05, gone.set_result, None)
        other = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later()))
        with pytest.raises(ClientDisconnected):
            await batcher.submit(rows(7, 3), deadline=later(), gone=gone)
        await other
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]
    assert batcher.stats.rejected["disconnected"] == 3


def test_cancelled_waiter_tiles_are_skipped():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        task = asyncio.ensure_future(batcher.submit(rows(7, 2), deadline=later()))
        other = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later()))
        await asyncio.sleep(0.05)
        task.cancel()
        await other
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]
    assert batcher.stats.rejected["cancelled"] == 2 and batcher.queued_tiles == 0


def test_failing_batch_fails_all_its_requests_and_the_worker_goes_on():
    model = Recorder(fail=True)

    async def go():
        batcher = make(model, max_wait_s=0.1)
        batcher.start()
        results = await asyncio.gather(
            *(batcher.submit(rows(i, 1), deadline=later()) for i in range(3)), return_exceptions=True
        )
        model.fail = False
        after = await batcher.submit(rows(5, 1), deadline=later())
        await batcher.stop()
        return batcher, results, after

    batcher, results, after = run(go())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert "RuntimeError: boom" in results[0].detail and results[0].status == 503
    assert after[0, 0] == 10
    assert batcher.stats.failed_batches == 1 and batcher.stats.rejected["error"] == 3


def test_wrong_number_of_output_rows_is_a_failed_batch():
    async def go():
        batcher = make(lambda r: r[:1], max_wait_s=0)
        batcher.start()
        with pytest.raises(InferenceFailed, match="returned 1 rows for 2 inputs"):
            await batcher.submit(rows(0, 2), deadline=later())
        await batcher.stop()

    run(go())


def test_warm_up_runs_before_serving():
    model = Recorder()

    async def go():
        batcher = make(model, warmup=np.zeros((8, 1), np.float32))
        batcher.start()
        await asyncio.wait_for(batcher.ready.wait(), 5)
        await batcher.submit(rows(0, 1), deadline=later())
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert model.sizes == [8, 1, 2, 3, 4, 5, 6, 7, 1]  # the full batch, every smaller size, then the request
    assert batcher.stats.batches == 1  # warm-up is not counted
    assert batcher.warmup_error is None


def test_drain_finishes_accepted_requests_and_refuses_new_ones():
    model = Recorder(delay_s=0.1)

    async def go():
        batcher = make(model, max_batch_tiles=2, max_wait_s=0.05)
        batcher.start()
        accepted = [asyncio.ensure_future(batcher.submit(rows(i, 2), deadline=later())) for i in range(3)]
        await asyncio.sleep(0)
        drain = asyncio.ensure_future(batcher.drain(grace_s=5))
        await asyncio.sleep(0)
        with pytest.raises(ShuttingDown):
            await batcher.submit(rows(0, 1), deadline=later())
        unfinished = await drain
        return unfinished, [a.result() for a in accepted]

    unfinished, results = run(go())
    assert unfinished == 0
    assert [r[:, 0].tolist() for r in results] == [[0, 2], [2, 4], [4, 6]]


def test_drain_gives_up_after_the_grace_period():
    model = Recorder(delay_s=0.5)

    async def go():
        batcher = make(model, max_batch_tiles=1, max_wait_s=0)
        batcher.start()
        accepted = [asyncio.ensure_future(batcher.submit(rows(i, 1), deadline=later())) for i in range(3)]
        await asyncio.sleep(0.05)
        unfinished = await batcher.drain(grace_s=0.1)
        outcomes = await asyncio.gather(*accepted, return_exceptions=True)
        return unfinished, outcomes

    unfinished, outcomes = run(go())
    assert unfinished == 3
    assert all(isinstance(o, ShuttingDown) for o in outcomes)


def test_model_thread_takes_the_next_batch_without_the_event_loop():
    """While the event loop is busy (here: blocked), the model thread goes on to the next
    queued batch by itself; only the answers wait for the loop."""

    async def go():
        recorder = Recorder(delay_s=0.05)
        b = make(recorder, max_batch_tiles=2, max_wait_s=0)
        b.start()
        await b.ready.wait()
        waiting = [asyncio.ensure_future(b.submit(rows(2 * i, 2), deadline=later())) for i in range(3)]
        while not recorder.started.is_set():
            await asyncio.sleep(0.005)
        time.sleep(0.5)  # blocks the event loop: nothing scheduled on it runs meanwhile
        assert recorder.sizes == [2, 2, 2]  # all three calls happened during the block
        assert not any(w.done() for w in waiting)  # answers go through the loop
        results = await asyncio.gather(*waiting)
        for i, out in enumerate(results):
            np.testing.assert_array_equal(out, rows(2 * i, 2) * 2)
        await b.stop()

    run(go())


# -- closing early: nobody else on the way ------------------------------------------------------


def test_collect_closes_early_when_no_request_is_on_its_way():
    start = time.monotonic()
    batch, _ = collect_batch(_queue(_slice(1)), 8, max_wait_s=5, close_early=True)
    assert [s.size for s in batch] == [1] and time.monotonic() - start < 1


def test_collect_waits_for_expected_requests_and_no_longer():
    queue = _queue(_slice(1))
    queue.expect()  # a request is reading its body
    queue.expect()  # and another one, which will be answered from the cache
    threading.Timer(0.1, lambda: queue.put(_slice(2), expected=True)).start()
    threading.Timer(0.2, queue.unexpect).start()
    start = time.monotonic()
    batch, _ = collect_batch(queue, 8, max_wait_s=5, close_early=True)
    elapsed = time.monotonic() - start
    assert [s.size for s in batch] == [1, 2]  # waited for the expected one
    assert 0.18 <= elapsed < 1  # and closed when the last one was withdrawn, not after 5 s
    assert queue.coming == 0


def test_tickets_count_a_request_once_whatever_happens():
    async def go():
        b = make(Recorder(), close_early=True)
        b.start()
        with b.expect() as used, b.expect():  # one submits, one never does (say, a cache hit)
            assert b._queue.coming == 2
            await b.submit(rows(0, 2), deadline=later(), ticket=used)
            assert b._queue.coming == 1
        assert b._queue.coming == 0
        with pytest.raises(ValueError), b.expect():  # a request that fails before submitting
            raise ValueError("undecodable body")
        assert b._queue.coming == 0
        await b.stop()

    run(go())
