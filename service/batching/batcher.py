"""Dynamic batching: tiles of many concurrent requests share one model call.

One ``Batcher`` serves one operation (encode or decode) of one model. Requests submit their
rows and wait on a future; the batcher's model thread collects a batch (``tessera.service.batching.queue``),
runs the model and hands every request its rows back, in order, through the event loop.

The model thread takes its next batch itself, the moment a call ends: tiles that arrived during
the call go at once, without a round trip through the event loop (which, busy with a burst of
requests, left the model idle for a few milliseconds per batch). Everything else (admission,
deadlines, events, answers) stays on the event loop.

- Rows with equal keys in a batch are computed once (sheets repeat tiles a lot). Encode passes
  the tile hashes it computed for the cache; without keys a row's bytes are its key.
- Admission (``tessera.service.batching.admission``): a request that does not fit the queue, or would not be
  computed before its deadline, is refused at once with 503 and Retry-After.
- A request that waits past its deadline gets ``DeadlineExceeded`` (504); a request whose client
  went away is abandoned. In both cases its tiles still waiting are dropped, never computed.
- A model call that raises, or returns the wrong number of rows, fails every request of that
  batch with ``InferenceFailed`` (503); the thread goes on with the next batch.
- ``stop()`` (once the lifecycle has drained the requests in flight) closes the queue and fails
  whatever is left with ``ShuttingDown``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable, Hashable, Sequence

import numpy as np

from tessera.service.batching.admission import Admission
from tessera.service.batching.queue import Job, QueueClosed, Slice, Ticket, TileQueue, collect_batch, dedupe
from tessera.service.runtime.clock import MONOTONIC, Clock
from tessera.service.errors import ClientDisconnected, DeadlineExceeded, InferenceFailed, ShuttingDown
from tessera.service.runtime.events import NULL, EventSink
from tessera.service.runtime.lifecycle import Lifecycle, Phase
from tessera.service.batching.warmup import warm_up

logger = logging.getLogger(__name__)

Infer = Callable[[np.ndarray], np.ndarray]  # rows in -> rows out, same count; runs in the model thread


# how long stop() waits for the model thread to finish its call in progress and return: a daemon
# thread still inside torch when the interpreter exits is ended inside C++ code, and the process
# aborts ("terminate called without an active exception", exit -6) after a clean drain
STOP_JOIN_S = 30.0
WATCH_AFTER_S = 0.05  # a request still waiting after this starts watching for its client leaving


class LoopGone(Exception):
    """The event loop closed under a model thread: nobody is left to answer."""


class Batcher:
    """Queue, model thread and delivery for one (model, operation).

    Args:
        model, op: what it serves, e.g. ``"dcae-s48"``, ``"encode"`` (its name: ``dcae-s48/encode``).
        infer: the model call, run in the batcher's model thread; must return one row per input row.
        max_batch_tiles: most tiles per model call.
        max_wait_s: how long a batch stays open for more tiles after its first one.
        max_queue_tiles: most tiles waiting; beyond it requests get ``Overloaded``.
        warmup: rows for the warm-up before serving (``tessera.service.batching.warmup``), or None.
        model_lock: held around every model call; the batchers of one model share one, so
            their calls never overlap (they would only fight over the same cores).
        close_early: a batch waiting for company closes as soon as no request is on its way
            (``expect``), instead of at ``max_wait_s``.
        clock: the time of batch windows and deadlines.
        events: where batches, queue depth and rejections are reported; may be set until ``start``.
        lifecycle: the server's; told about the warm-up, read for whether work is still taken.
            May be set until ``start``.
    """

    def __init__(
        self,
        model: str,
        op: str,
        infer: Infer,
        *,
        max_batch_tiles: int,
        max_wait_s: float,
        max_queue_tiles: int,
        warmup: np.ndarray | None = None,
        model_lock: threading.Lock | None = None,
        close_early: bool = True,
        clock: Clock = MONOTONIC,
        events: EventSink = NULL,
        lifecycle: Lifecycle | None = None,
    ) -> None:
        self.name = f"{model}/{op}"
        if max_batch_tiles < 1 or max_wait_s < 0 or max_queue_tiles < 1:
            raise ValueError(
                f"batcher {self.name}: need max_batch_tiles >= 1, max_wait_s >= 0 and max_queue_tiles >= 1, "
                f"got {max_batch_tiles}, {max_wait_s}, {max_queue_tiles}"
            )
        self.model, self.op = model, op
        self.infer = infer
        self.max_batch_tiles = max_batch_tiles
        self.max_wait_s = max_wait_s
        self.close_early = close_early
        self.clock = clock
        self.events = events
        self.lifecycle = lifecycle if lifecycle is not None else Lifecycle()
        self.admission = Admission(self.name, max_queue_tiles, max_wait_s)
        self.ready = asyncio.Event()  # set once warm-up has run (even if it failed)
        self.warmup_error: str | None = None
        self._warmup = warmup
        self._model_lock = model_lock if model_lock is not None else threading.Lock()
        self._queue = TileQueue(clock)
        self._jobs: set[Job] = set()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy_since: float | None = None  # end of the last batch, when tiles were still queued (model thread)
        self._calling_since: float | None = None  # when the running model call began (model thread)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model thread (warm-up first); call from the running event loop."""
        if self._thread is not None:
            raise RuntimeError(f"batcher {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self.lifecycle.warming(self.name)
        self._thread = threading.Thread(target=self._work, name=f"tessera {self.name}", daemon=True)
        self._thread.start()

    @property
    def model_lock(self) -> threading.Lock:
        """Held around every model call; a batcher of the same model shares it."""
        return self._model_lock

    @property
    def queued_tiles(self) -> int:
        return self.admission.queued

    @property
    def accepting(self) -> bool:
        return not self._closed and self.lifecycle.phase is not Phase.STOPPED

    def call_running_s(self) -> float | None:
        """How long the model call in progress has run, or None when none is."""
        since = self._calling_since
        return None if since is None else self.clock.now() - since

    async def stop(self) -> int:
        """Stop the model thread and wait for it to return (a call in progress runs to its end, its
        answers unsent); requests still waiting get ``ShuttingDown``. Returns how many there were."""
        self._closed = True
        self._queue.close()
        left = [job for job in self._jobs if not job.future.done()]
        for job in left:
            self._reject("shutdown", job.remaining)
            job.fail(ShuttingDown(f"{self.name}: the server shut down before this request was computed; retry it"))
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            await asyncio.to_thread(thread.join, STOP_JOIN_S)
            if thread.is_alive():
                logger.warning("%s: the model call in progress did not end within %.0f s of the shutdown", self.name,
                               STOP_JOIN_S)
        return len(left)

    # -- submitting ------------------------------------------------------------------------

    def expect(self) -> Ticket:
        """Count a request as on its way for as long as it reads and decodes its body
        (``with batcher.expect() as ticket:``); pass the ticket to ``submit``, or give it back as
        soon as the request will not submit."""
        return Ticket(self._queue)

    async def submit(
        self,
        rows: np.ndarray,
        *,
        deadline: float,
        keys: Sequence[Hashable] | None = None,
        gone: Callable[[], Awaitable[object]] | None = None,
        ticket: Ticket | None = None,
    ) -> np.ndarray:
        """Compute ``rows`` in batches with other requests; the results, in order.

        Args:
            rows: the request's inputs, one row per tile (at least one).
            deadline: on the batcher's clock, by when the answer must be there, else 504.
            keys: one per row; rows with equal keys are computed once. None: the rows' bytes.
            gone: returns an awaitable that completes when the client disconnects; its tiles are
                then dropped. It is started only once the request has waited ``WATCH_AFTER_S``:
                most requests are answered sooner, and watching costs each one a task.
            ticket: from ``expect``; it stops counting once the rows are queued.

        Raises:
            Overloaded, ShuttingDown, DeadlineExceeded, ClientDisconnected, InferenceFailed.
        """
        n = len(rows)
        if n == 0:
            raise ValueError("submit needs at least one row")
        if not self.accepting:
            self._reject("shutdown", n)
            raise ShuttingDown(f"{self.name}: the server is shutting down; retry on another instance", retry_after_s=5)
        now = self.clock.now()
        refused = self.admission.refusal(n, deadline, now)
        if refused is not None:
            reason, error = refused
            self._reject(reason, n)
            raise error
        loop = asyncio.get_running_loop()
        job = Job(rows, keys, loop.create_future(), deadline, now)
        self._jobs.add(job)
        self.admission.queued += n
        job.future.add_done_callback(lambda _: self._settled(job))
        self._queue.put(Slice(job, 0, n), ticket is not None and ticket.redeem())
        self._depth_changed()

        watch = _Watch(self, job, gone)
        watch.arm(loop, deadline - now)
        try:
            return await job.future
        except asyncio.CancelledError:
            if job.future.cancelled():  # our waiter was cancelled (the request's task went away)
                self._reject("cancelled", job.remaining)
            raise
        finally:
            watch.end()

    def _expire(self, job: Job) -> None:
        if not job.future.done():
            self._reject("deadline", job.remaining)
            job.fail(DeadlineExceeded(
                f"{self.name}: no result within the request timeout ({job.remaining} of {len(job.rows)} tiles not "
                f"computed); retry later, send fewer tiles, or raise TESSERA_REQUEST_TIMEOUT_S"
            ))

    def _gone(self, job: Job) -> None:
        if not job.future.done():
            self._reject("disconnected", job.remaining)
            job.fail(ClientDisconnected(f"{self.name}: the client disconnected; its tiles were not computed"))

    def _settled(self, job: Job) -> None:
        """Done callback of every job: rows it still had in the queue stop counting."""
        if self._take(job, job.queued):
            self._depth_changed()
        self._jobs.discard(job)

    def _take(self, job: Job, n: int) -> int:
        n = min(n, job.queued)
        job.queued -= n
        self.admission.queued -= n
        return n

    def _reject(self, reason: str, tiles: int) -> None:
        self.events.tiles_rejected(self.model, self.op, reason, tiles)

    def _depth_changed(self) -> None:
        self.events.queue_depth(self.model, self.op, self.admission.queued)

    # -- the model thread ------------------------------------------------------------------

    def _work(self) -> None:
        """The model thread: warm up, then collect and compute batches until the queue closes.
        What the event loop must do (answers, events) goes to it with call_soon_threadsafe."""
        try:
            self._on_loop(self._warmed, warm_up(self.name, self.infer, self._warmup, self._model_lock))
        except LoopGone:
            return
        carry: Slice | None = None
        batch: list[Slice] = []
        while True:
            try:
                batch, carry = collect_batch(self._queue, self.max_batch_tiles, self.max_wait_s, carry, self.close_early)
                self._process(batch)
            except (QueueClosed, LoopGone):
                return
            except Exception as exc:  # a bug here must not stop the thread; the batch's requests fail
                logger.exception("%s: batch handling failed", self.name)
                error = InferenceFailed(f"{self.name}: internal batching error ({type(exc).__name__}); retry")
                try:
                    self._on_loop(self._fail_all, batch, error)
                except LoopGone:
                    return

    def _on_loop(self, fn: Callable, *args) -> None:
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError as exc:  # the loop closed: nobody is left to answer
            raise LoopGone from exc

    def _process(self, batch: list[Slice]) -> None:
        """Compute one batch (model thread). Pieces whose request is gone or past its deadline
        are left out; the event loop settles them (``_taken``)."""
        now = self.clock.now()
        live = [piece for piece in batch if not piece.abandoned and now <= piece.job.deadline]
        self._on_loop(self._taken, batch, now)
        if not live:
            return
        unique, inverse = dedupe(live)
        with self._model_lock:
            start = self._calling_since = self.clock.now()
            try:
                out = self.infer(unique)
                if not isinstance(out, np.ndarray) or len(out) != len(unique):
                    got = f"{len(out)} rows" if isinstance(out, np.ndarray) else type(out).__name__
                    raise RuntimeError(f"model returned {got} for {len(unique)} inputs")
            except Exception as exc:
                self._on_loop(self._failed, live, len(unique), exc)
                return
            finally:
                self._calling_since = None
            end = self.clock.now()
        # The throughput the queue sees: from the end of the previous batch when tiles were
        # already waiting then (collecting, handing over and CPU taken by others count), else
        # from this call's start. A machine that gets slower lowers it at once.
        busy = end - (self._busy_since if self._busy_since is not None else start)
        self._busy_since = end if len(self._queue) else None
        self._on_loop(self._computed, live, out if inverse is None else out[inverse], len(unique), end - start, busy)

    # -- back on the event loop ------------------------------------------------------------

    def _warmed(self, error: str | None) -> None:
        self.warmup_error = error
        self.ready.set()
        self.lifecycle.warmed(self.name, error)

    def _taken(self, batch: list[Slice], now: float) -> None:
        """A batch left the queue: its tiles stop counting; pieces past their deadline fail."""
        waited: list[float] = []
        tiles = 0
        for piece in batch:
            self._take(piece.job, piece.size)
            if piece.abandoned:
                continue
            if now > piece.job.deadline:
                self._reject("deadline", piece.job.remaining)
                piece.job.fail(DeadlineExceeded(f"{self.name}: the request waited past its deadline; its tiles were not computed"))
            else:
                waited.append(now - piece.job.enqueued_at)
                tiles += piece.size
        self._depth_changed()
        if waited:
            self.events.batch_formed(self.model, self.op, tiles, waited)

    def _computed(self, live: list[Slice], out: np.ndarray, unique: int, seconds: float, busy: float) -> None:
        self.admission.observed(unique, busy)
        self.events.batch_computed(self.model, self.op, len(out), unique, seconds)
        offset = 0
        for piece in live:
            piece.job.deliver(piece.start, out[offset : offset + piece.size])
            offset += piece.size

    def _failed(self, live: list[Slice], unique: int, exc: Exception) -> None:
        problem = f"{type(exc).__name__}: {exc}"
        self.events.batch_failed(self.model, self.op, sum(piece.size for piece in live), problem)
        logger.error("%s: model call on %d tiles failed: %s", self.name, unique, problem)
        self._fail_all(live, InferenceFailed(
            f"{self.name}: the model call for this request's batch failed ({problem}); nothing was computed, retry the request"
        ))

    @staticmethod
    def _fail_all(pieces: list[Slice], error: Exception) -> None:
        for piece in pieces:
            piece.job.fail(error)


class _Watch:
    """The timers of one waiting request: its deadline and, from ``WATCH_AFTER_S`` on, a watch
    for its client leaving. One loop timer at a time: until the watch starts, the timer that
    would start it also stands for the deadline."""

    __slots__ = ("batcher", "job", "gone", "timer", "watcher")

    def __init__(self, batcher: Batcher, job: Job, gone: Callable[[], Awaitable[object]] | None) -> None:
        self.batcher, self.job, self.gone = batcher, job, gone
        self.timer: asyncio.TimerHandle | None = None
        self.watcher: asyncio.Future | None = None

    def arm(self, loop: asyncio.AbstractEventLoop, left_s: float) -> None:
        left_s = max(0.0, left_s)
        if self.gone is None or left_s <= WATCH_AFTER_S:
            self.timer = loop.call_later(left_s, self.batcher._expire, self.job)
        else:
            self.timer = loop.call_later(WATCH_AFTER_S, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        job = self.job
        if job.future.done():
            return
        self.watcher = asyncio.ensure_future(self.gone(), loop=loop)
        self.watcher.add_done_callback(self._left)
        self.timer = loop.call_later(max(0.0, job.deadline - self.batcher.clock.now()), self.batcher._expire, job)

    def _left(self, watcher: asyncio.Future) -> None:
        if not watcher.cancelled():
            self.batcher._gone(self.job)

    def end(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        if self.watcher is not None:
            self.watcher.remove_done_callback(self._left)
            self.watcher.cancel()
