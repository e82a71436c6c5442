"""Batching on its own, with a numpy stand-in for the model: the tile queue and batch collection
(``tessera.service.batching.queue``) and the batcher (``tessera.service.batching.batcher``). Batch windows run on a
``FakeClock``; a model that must be busy waits on an event, never on a sleep."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest

from tessera.service.batching.batcher import Batcher
from tessera.service.batching.queue import Job, QueueClosed, Slice, TileQueue, collect_batch, dedupe
from tessera.service.errors import ClientDisconnected, DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown
from tessera.service.runtime.lifecycle import Lifecycle
from tessera.testing.clock import FakeClock
from tessera.testing.events import RecordingSink
from tessera.testing.waiting import until, wait_until


def run(coro):
    return asyncio.run(coro)


class Recorder:
    """A model stand-in: doubles its rows and remembers every call; ``hold()`` makes calls wait
    for ``release()``."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[np.ndarray] = []
        self.fail = fail
        self.started = threading.Event()
        self._open = threading.Event()
        self._open.set()

    def hold(self) -> Recorder:
        self._open.clear()
        return self

    def release(self) -> None:
        self._open.set()

    def __call__(self, rows: np.ndarray) -> np.ndarray:
        self.calls.append(rows.copy())
        self.started.set()
        assert self._open.wait(60), "the test never released the model"
        if self.fail:
            raise RuntimeError("boom")
        return rows.astype(np.float32) * 2

    @property
    def sizes(self) -> list[int]:
        return [len(c) for c in self.calls]


def rows(start: int, n: int) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


def make(infer, clock: FakeClock | None = None, **kw) -> Batcher:
    """A batcher whose window always runs its full length (tests of the early close say
    otherwise), on ``clock`` (a fresh FakeClock by default), reporting to a RecordingSink."""
    options = {"max_batch_tiles": 8, "max_wait_s": 0.05, "max_queue_tiles": 64, "close_early": False,
               "clock": clock or FakeClock(), "events": RecordingSink()}
    options.update(kw)
    return Batcher("test", "encode", infer, **options)


def later(batcher: Batcher, seconds: float = 30.0) -> float:
    return batcher.clock.now() + seconds


async def queued(batcher: Batcher, tiles: int) -> None:
    await until(lambda: batcher.queued_tiles == tiles, what=f"{tiles} tiles queued")


# -- collect_batch (runs in the model thread) ----------------------------------------------


class _Done:
    """A stand-in for a request's future: collect_batch only asks whether it is done."""

    def __init__(self) -> None:
        self.cancelled = False

    def done(self) -> bool:
        return self.cancelled


def _slice(clock: FakeClock, n: int, enqueued_ago_s: float = 0.0) -> Slice:
    job = Job(rows(0, n), None, _Done(), clock.now() + 60, clock.now() - enqueued_ago_s)
    return Slice(job, 0, n)


def _queue(clock: FakeClock, *sizes: int) -> TileQueue:
    queue = TileQueue(clock)
    for n in sizes:
        queue.put(_slice(clock, n))
    return queue


class Collecting:
    """collect_batch in a thread of its own, as the model thread runs it."""

    def __init__(self, queue: TileQueue, max_wait_s: float, **kw) -> None:
        self.result: tuple | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(queue, max_wait_s), kwargs=kw, daemon=True)
        self._thread.start()

    def _run(self, queue, max_wait_s, **kw) -> None:
        try:
            self.result = collect_batch(queue, 8, max_wait_s, **kw)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def done(self) -> tuple[list[Slice], Slice | None]:
        """Its batch and carry, once it returned by itself (the clock is not advanced here)."""
        wait_until(lambda: not self._thread.is_alive(), what="collect_batch returned")
        if self.error is not None:
            raise self.error
        return self.result


def test_collect_closes_at_max_tiles_and_carries_the_rest():
    clock = FakeClock()
    queue = _queue(clock, 3, 4, 5)
    batch, carry = collect_batch(queue, 8, max_wait_s=10)
    assert [s.size for s in batch] == [3, 4, 1]
    assert carry is not None and (carry.start, carry.stop) == (1, 5)
    batch, carry = collect_batch(queue, 8, max_wait_s=0, carry=carry)
    assert [(s.start, s.stop) for s in batch] == [(1, 5)] and carry is None


def test_collect_closes_max_wait_after_the_first_tile_arrived():
    clock = FakeClock()
    queue = TileQueue(clock)
    collecting = Collecting(queue, max_wait_s=0.1)
    wait_until(lambda: clock.deadlines == [None], what="waiting for a first tile, without a deadline")
    clock.advance(5)  # the first tile arrives late: its window starts then
    queue.put(_slice(clock, 1))
    wait_until(lambda: clock.deadlines == [clock.now() + 0.1], what="waiting out the window from the first tile")
    clock.advance(0.02)
    queue.put(_slice(clock, 1))
    clock.advance(0.08)
    batch, carry = collecting.done()
    assert [s.size for s in batch] == [1, 1] and carry is None


def test_collect_returns_as_soon_as_the_batch_is_full():
    clock = FakeClock()
    queue = _queue(clock, 3)
    collecting = Collecting(queue, max_wait_s=5)
    wait_until(lambda: clock.deadlines, what="the batch window is open")
    queue.put(_slice(clock, 5))  # the clock never moves: only a full batch ends the wait
    batch, carry = collecting.done()
    assert [s.size for s in batch] == [3, 5] and carry is None


def test_tiles_that_waited_out_the_window_go_at_once_with_what_is_queued():
    """The window runs from the first tile's arrival, not from when the model thread takes it."""
    clock = FakeClock()
    queue = TileQueue(clock)
    queue.put(_slice(clock, 2, enqueued_ago_s=1.0))  # queued while the model was busy
    queue.put(_slice(clock, 3))
    batch, carry = Collecting(queue, max_wait_s=0.5).done()  # no wait for more tiles
    assert [s.size for s in batch] == [2, 3] and carry is None


def test_a_fresh_first_tile_still_waits_for_company():
    clock = FakeClock()
    queue = _queue(clock, 1)
    collecting = Collecting(queue, max_wait_s=0.3)
    wait_until(lambda: clock.deadlines == [clock.now() + 0.3], what="waiting out the window")
    queue.put(_slice(clock, 1))
    clock.advance(0.3)
    batch, _ = collecting.done()
    assert [s.size for s in batch] == [1, 1]


def test_the_carry_of_an_old_request_does_not_wait():
    clock = FakeClock()
    _, rest = _slice(clock, 10, enqueued_ago_s=1.0).split(8)
    batch, carry = Collecting(TileQueue(clock), max_wait_s=0.5, carry=rest).done()
    assert [(s.start, s.stop) for s in batch] == [(8, 10)] and carry is None


def test_collect_with_zero_wait_takes_what_is_queued():
    batch, _ = collect_batch(_queue(FakeClock(), 2, 2, 2), 8, max_wait_s=0)
    assert [s.size for s in batch] == [2, 2, 2]


def test_collect_skips_abandoned_requests():
    clock = FakeClock()
    dead, live = _slice(clock, 3), _slice(clock, 2)
    dead.job.future.cancelled = True
    queue = TileQueue(clock)
    queue.put(dead)
    queue.put(live)
    batch, _ = collect_batch(queue, 8, max_wait_s=0)
    assert batch == [live]


def test_collect_rejects_empty_batches():
    with pytest.raises(ValueError, match="max_tiles"):
        collect_batch(TileQueue(), 0, 0.1)


def test_collect_ends_when_the_queue_closes():
    clock = FakeClock()
    queue = TileQueue(clock)
    collecting = Collecting(queue, max_wait_s=0.1)
    wait_until(lambda: clock.deadlines, what="waiting for a first tile")
    queue.close()
    with pytest.raises(QueueClosed):
        collecting.done()


def test_dedupe_keys_rows_by_their_bytes_or_by_the_keys_given_and_keeps_first_seen_order():
    clock = FakeClock()
    data = np.array([[1], [2], [1], [3], [2]], dtype=np.uint8)
    unique, inverse = dedupe([Slice(Job(data, None, _Done(), 0, 0), 0, 5)])
    assert unique[:, 0].tolist() == [1, 2, 3]
    assert np.array_equal(unique[inverse], data)
    keyed = Job(np.arange(3)[:, None], [b"a", b"b", b"a"], _Done(), 0, clock.now())
    other = Job(np.arange(10, 12)[:, None], [b"b", b"c"], _Done(), 0, clock.now())
    unique, inverse = dedupe([Slice(keyed, 0, 3), Slice(other, 0, 2)])
    assert unique[:, 0].tolist() == [0, 1, 11] and inverse.tolist() == [0, 1, 0, 1, 2]
    distinct, none = dedupe([Slice(Job(data[:2], None, _Done(), 0, 0), 0, 2)])
    assert none is None and distinct is not None


# -- closing early: nobody else on the way ------------------------------------------------------


def test_collect_closes_early_when_no_request_is_on_its_way():
    clock = FakeClock()
    batch, _ = Collecting(_queue(clock, 1), max_wait_s=5, close_early=True).done()  # the window never ends
    assert [s.size for s in batch] == [1]


def test_collect_waits_for_expected_requests_and_no_longer():
    clock = FakeClock()
    queue = _queue(clock, 1)
    queue.expect()  # a request is reading its body
    queue.expect()  # and another one, which will be answered from the cache
    collecting = Collecting(queue, max_wait_s=5, close_early=True)
    wait_until(lambda: clock.deadlines, what="waiting for the expected requests")
    queue.put(_slice(clock, 2), expected=True)
    assert clock.deadlines, "closed before the last expected request gave up"
    queue.unexpect()
    batch, _ = collecting.done()  # closed when the last one was withdrawn; the clock never moved
    assert [s.size for s in batch] == [1, 2]
    assert queue.coming == 0


# -- Batcher -----------------------------------------------------------------------------------


def test_concurrent_requests_share_one_model_call():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(rows(i, 1), deadline=later(batcher))) for i in range(5)]
        await queued(batcher, 5)
        batcher.clock.advance(0.2)
        results = await asyncio.gather(*waiting)
        await batcher.stop()
        return batcher, results

    batcher, results = run(go())
    assert model.sizes == [5]
    assert batcher.events.batch_sizes() == {5: 1}
    assert [r[0, 0] for r in results] == [0, 2, 4, 6, 8]


def test_a_large_request_is_split_and_reassembled_in_order():
    model = Recorder().hold()

    async def go():
        batcher = make(model, max_batch_tiles=4, max_wait_s=0)
        batcher.start()
        big = asyncio.ensure_future(batcher.submit(rows(0, 10), deadline=later(batcher)))
        small = asyncio.ensure_future(batcher.submit(rows(100, 3), deadline=later(batcher)))
        await asyncio.to_thread(model.started.wait, 60)  # the first batch is in the model, both requests queued
        await queued(batcher, 10 - 4 + 3)
        model.release()
        big, small = await asyncio.gather(big, small)
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
        waiting = [asyncio.ensure_future(batcher.submit(same, deadline=later(batcher))),
                   asyncio.ensure_future(batcher.submit(same[:2], deadline=later(batcher)))]
        await queued(batcher, 5)
        batcher.clock.advance(0.1)
        out = await asyncio.gather(*waiting)
        await batcher.stop()
        return batcher, out

    batcher, out = run(go())
    assert model.sizes == [1]
    assert batcher.events.of("batch_computed") == [{"model": "test", "op": "encode", "tiles": 5, "unique": 1,
                                                    "seconds": 0.0}]  # the fake clock stood still
    assert out[0].shape == (3, 1) and out[1].shape == (2, 1)


def test_rows_with_equal_keys_are_computed_once_across_requests():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.1)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(rows(0, 2), keys=[b"x", b"y"], deadline=later(batcher))),
                   asyncio.ensure_future(batcher.submit(rows(5, 2), keys=[b"y", b"z"], deadline=later(batcher)))]
        await queued(batcher, 4)
        batcher.clock.advance(0.1)
        out = await asyncio.gather(*waiting)
        await batcher.stop()
        return out

    first, second = run(go())
    assert model.sizes == [3]  # x, y, z
    assert first[:, 0].tolist() == [0, 2] and second[:, 0].tolist() == [2, 12]  # "y" was computed from the first row


def test_a_full_queue_is_refused_with_retry_after():
    model = Recorder().hold()

    async def go():
        batcher = make(model, max_batch_tiles=4, max_queue_tiles=6, max_wait_s=0)
        batcher.start()
        first = asyncio.ensure_future(batcher.submit(rows(0, 4), deadline=later(batcher)))
        await asyncio.to_thread(model.started.wait, 60)  # the model is busy with the first batch
        second = asyncio.ensure_future(batcher.submit(rows(0, 5), deadline=later(batcher)))
        await queued(batcher, 5)
        with pytest.raises(Overloaded) as info:
            await batcher.submit(rows(0, 2), deadline=later(batcher))
        model.release()
        await asyncio.gather(first, second)
        await batcher.stop()
        return batcher, info.value

    batcher, error = run(go())
    assert error.status == 503 and int(error.headers["Retry-After"]) >= 1
    assert "5 tiles are queued (limit 6)" in error.detail
    assert batcher.events.rejected("queue_full") == 2


def test_the_deadline_gives_504_and_the_tiles_are_not_computed():
    model = Recorder().hold()

    async def go():
        batcher = make(model, max_batch_tiles=2, max_wait_s=0)
        batcher.start()
        busy = asyncio.ensure_future(batcher.submit(rows(0, 2), deadline=later(batcher)))
        await asyncio.to_thread(model.started.wait, 60)
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(rows(50, 2), deadline=later(batcher, 0.05))  # 50 ms of real time: the timer's
        model.release()
        await busy
        await queued(batcher, 0)
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0, 1]]
    assert batcher.events.rejected("deadline") == 2


def test_a_deadline_passed_while_the_batch_was_open_is_not_computed():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.3)
        batcher.start()
        slow = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later(batcher)))
        late = asyncio.ensure_future(batcher.submit(rows(9, 1), deadline=later(batcher, 0.1)))
        await queued(batcher, 2)
        batcher.clock.advance(0.3)  # the window ends after the second request's deadline
        with pytest.raises(DeadlineExceeded):
            await late
        await slow
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]
    assert batcher.events.rejected("deadline") == 1


def test_a_disconnected_clients_tiles_are_skipped():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        gone = asyncio.get_running_loop().create_future()
        other = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later(batcher)))
        leaving = asyncio.ensure_future(batcher.submit(rows(7, 3), deadline=later(batcher), gone=lambda: gone))
        await queued(batcher, 4)
        gone.set_result(None)
        with pytest.raises(ClientDisconnected):
            await leaving
        batcher.clock.advance(0.2)
        await other
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]
    assert batcher.events.rejected("disconnected") == 3


def test_a_cancelled_waiters_tiles_are_skipped():
    model = Recorder()

    async def go():
        batcher = make(model, max_wait_s=0.2)
        batcher.start()
        task = asyncio.ensure_future(batcher.submit(rows(7, 2), deadline=later(batcher)))
        other = asyncio.ensure_future(batcher.submit(rows(0, 1), deadline=later(batcher)))
        await queued(batcher, 3)
        task.cancel()
        await queued(batcher, 1)
        batcher.clock.advance(0.2)
        await other
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert [c[:, 0].tolist() for c in model.calls] == [[0]]
    assert batcher.events.rejected("cancelled") == 2 and batcher.queued_tiles == 0


def test_a_failing_batch_fails_all_its_requests_and_the_thread_goes_on():
    model = Recorder(fail=True)

    async def go():
        batcher = make(model, max_wait_s=0.1)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(rows(i, 1), deadline=later(batcher))) for i in range(3)]
        await queued(batcher, 3)
        batcher.clock.advance(0.1)
        results = await asyncio.gather(*waiting, return_exceptions=True)
        model.fail = False
        after = asyncio.ensure_future(batcher.submit(rows(5, 1), deadline=later(batcher)))
        await queued(batcher, 1)
        batcher.clock.advance(0.1)
        after = await after
        await batcher.stop()
        return batcher, results, after

    batcher, results, after = run(go())
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert "RuntimeError: boom" in results[0].detail and results[0].status == 503
    assert after[0, 0] == 10
    assert batcher.events.count("batch_failed") == 1 and batcher.events.rejected("error") == 3


def test_a_wrong_number_of_output_rows_is_a_failed_batch():
    async def go():
        batcher = make(lambda r: r[:1], max_wait_s=0)
        batcher.start()
        with pytest.raises(InferenceFailed, match="returned 1 rows for 2 inputs"):
            await batcher.submit(rows(0, 2), deadline=later(batcher))
        await batcher.stop()

    run(go())


def test_the_warm_up_runs_before_serving_and_makes_the_lifecycle_ready():
    model = Recorder()
    lifecycle = Lifecycle()

    async def go():
        batcher = make(model, warmup=np.zeros((8, 1), np.float32), lifecycle=lifecycle, max_wait_s=0)
        batcher.start()
        assert lifecycle.not_ready_reason() == "test/encode is warming up"
        await asyncio.wait_for(batcher.ready.wait(), 60)
        await batcher.submit(rows(0, 1), deadline=later(batcher))
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert model.sizes == [8, 1, 2, 3, 4, 5, 6, 7, 1]  # the full batch, every smaller size, then the request
    assert batcher.events.count("batch_computed") == 1  # warm-up is not counted
    assert batcher.warmup_error is None and lifecycle.not_ready_reason() is None


def test_a_failed_warm_up_keeps_the_server_not_ready():
    lifecycle = Lifecycle()

    async def go():
        batcher = make(Recorder(fail=True), warmup=np.zeros((2, 1), np.float32), lifecycle=lifecycle)
        batcher.start()
        await asyncio.wait_for(batcher.ready.wait(), 60)
        await batcher.stop()
        return batcher

    batcher = run(go())
    assert batcher.warmup_error == "RuntimeError: boom"
    assert lifecycle.not_ready_reason() == "test/encode failed its warm-up: RuntimeError: boom"


def test_stop_fails_what_is_still_waiting_and_refuses_new_work():
    model = Recorder()
    lifecycle = Lifecycle()

    async def go():
        batcher = make(model, max_wait_s=1, lifecycle=lifecycle)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(rows(i, 1), deadline=later(batcher))) for i in range(3)]
        await queued(batcher, 3)
        lifecycle.stop()
        assert await batcher.stop() == 3
        with pytest.raises(ShuttingDown):
            await batcher.submit(rows(0, 1), deadline=later(batcher))
        return batcher, await asyncio.gather(*waiting, return_exceptions=True)

    batcher, outcomes = run(go())
    assert all(isinstance(o, ShuttingDown) for o in outcomes) and model.calls == []
    assert batcher.events.rejected("shutdown") == 4 and not batcher.accepting


def test_stop_returns_only_once_the_model_thread_has_ended():
    """A daemon model thread still inside torch at interpreter exit aborts the process after a
    clean drain (exit -6), so stop waits for the call in progress to end and the thread to return."""
    recorder = Recorder().hold()

    async def go():
        b = make(recorder, max_batch_tiles=2, max_wait_s=0)
        b.start()
        await b.ready.wait()
        waiting = asyncio.ensure_future(b.submit(rows(0, 2), deadline=later(b)))
        await until(recorder.started.is_set, what="a call in progress")
        stopping = asyncio.ensure_future(b.stop())
        await asyncio.sleep(0)  # stop has closed the queue and is waiting on the thread
        assert not stopping.done() and b._thread.is_alive()
        recorder.release()
        await stopping
        assert not b._thread.is_alive()
        waiting.cancel()

    run(go())


def test_the_model_thread_takes_the_next_batch_without_the_event_loop():
    """While the event loop is busy (here: blocked), the model thread goes on to the next
    queued batch by itself; only the answers wait for the loop."""
    recorder = Recorder().hold()

    async def go():
        b = make(recorder, max_batch_tiles=2, max_wait_s=0)
        b.start()
        await b.ready.wait()
        waiting = [asyncio.ensure_future(b.submit(rows(2 * i, 2), deadline=later(b))) for i in range(3)]
        await until(lambda: recorder.started.is_set() and len(b._jobs) == 3, what="all queued, the first in the model")
        recorder.release()
        # block the event loop until all three calls happened: nothing scheduled on it runs meanwhile
        wait_until(lambda: recorder.sizes == [2, 2, 2], what="three model calls while the loop is blocked")
        assert not any(w.done() for w in waiting)  # answers go through the loop
        results = await asyncio.gather(*waiting)
        for i, out in enumerate(results):
            np.testing.assert_array_equal(out, rows(2 * i, 2) * 2)
        await b.stop()

    run(go())


def test_tickets_count_a_request_once_whatever_happens():
    async def go():
        b = make(Recorder(), close_early=True, max_wait_s=0)
        b.start()
        with b.expect() as used, b.expect() as hit:  # one submits, one never does (a cache hit)
            assert b._queue.coming == 2
            await b.submit(rows(0, 2), deadline=later(b), ticket=used)
            assert b._queue.coming == 1
            hit.give_back()  # as soon as it knows
            assert b._queue.coming == 0
        assert b._queue.coming == 0
        with pytest.raises(ValueError), b.expect():  # a request that fails before submitting
            raise ValueError("undecodable body")
        assert b._queue.coming == 0
        await b.stop()

    run(go())
