"""Dynamic batching: tiles of many concurrent requests share one model call.

One ``Batcher`` serves one operation (encode or decode) of one model. Requests enqueue their
tiles and wait on a future; the batcher's model thread collects a batch, runs the model and
hands every request its rows back, in order, through the event loop.

The model thread takes its next batch itself, the moment a call ends: tiles that arrived during
the call go at once, without a round trip through the event loop (which, busy with a burst of
requests, left the model idle for a few milliseconds per batch). Everything else (admission,
deadlines, accounting, answers) stays on the event loop.

- Batches count tiles, not requests. A batch closes when it holds ``max_batch_tiles`` tiles,
  ``max_wait_s`` after its first tile, or as soon as no other request is on its way (admitted
  and still reading its body: ``Batcher.expect``), whichever comes first (``collect_batch``). A request
  larger than the room left is split; the rest opens the next batch, so requests are served in
  arrival order and reassembled in order.
- Identical tiles in a batch are computed once (sheets repeat tiles a lot).
- The queue is bounded in tiles: a request that does not fit is refused at once (``Overloaded``,
  503 with Retry-After) instead of queueing without bound. So is a request that would not be
  computed before its deadline at the recent throughput: better a quick 503 than a slow 504.
- A request that waits past its deadline gets ``DeadlineExceeded`` (504); a request whose client
  went away is abandoned. In both cases its tiles still waiting are dropped, never computed.
- A model call that raises, or returns the wrong number of rows, fails every request of that
  batch with ``InferenceFailed`` (503); the worker goes on with the next batch.
- ``drain()`` stops accepting, lets everything accepted finish within a grace period, then
  fails whatever is left with ``ShuttingDown``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from service.errors import ClientDisconnected, DeadlineExceeded, InferenceFailed, Overloaded, ShuttingDown

logger = logging.getLogger(__name__)

Infer = Callable[[np.ndarray], np.ndarray]  # rows in -> rows out, same count; runs in a worker thread
# A request is admitted only if its expected wait, times this, fits before its deadline: under
# overload the model gets less CPU than when its throughput was measured, so leave room.
ADMISSION_MARGIN = 2.0


class _Job:
    """One submitted request: its tiles, where its results go and how to tell its waiter."""

    __slots__ = ("tiles", "future", "deadline", "enqueued_at", "queued", "remaining", "out")

    def __init__(self, tiles: np.ndarray, future: asyncio.Future, deadline: float) -> None:
        self.tiles = tiles
        self.future = future
        self.deadline = deadline  # time.monotonic() after which the request is answered 504
        self.enqueued_at = time.monotonic()
        self.queued = len(tiles)  # tiles still waiting in the queue (not yet taken into a batch)
        self.remaining = len(tiles)  # tiles without a result yet
        self.out: np.ndarray | None = None

    def deliver(self, start: int, rows: np.ndarray) -> None:
        if self.future.done():
            return
        if self.out is None:
            self.out = np.empty((len(self.tiles), *rows.shape[1:]), dtype=rows.dtype)
        self.out[start : start + len(rows)] = rows
        self.remaining -= len(rows)
        if self.remaining == 0:
            self.future.set_result(self.out)

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class Slice:
    """Tiles ``[start, stop)`` of one job; what the queue holds and batches are made of."""

    job: _Job
    start: int
    stop: int

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def tiles(self) -> np.ndarray:
        return self.job.tiles[self.start : self.stop]

    @property
    def abandoned(self) -> bool:
        """The request already has its answer (failed, timed out or gone): skip its tiles."""
        return self.job.future.done()

    def split(self, n: int) -> tuple[Slice, Slice | None]:
        """The first ``n`` tiles and the rest (None when nothing is left)."""
        if n >= self.size:
            return self, None
        return Slice(self.job, self.start, self.start + n), Slice(self.job, self.start + n, self.stop)


class Ticket:
    """A request counted as on its way to a batcher (``Batcher.expect``)."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        self.used = False


class QueueClosed(Exception):
    """The batcher stopped: its model thread takes no more batches."""


class LoopGone(Exception):
    """The event loop closed under a model thread: nobody is left to answer."""


class TileQueue:
    """Slices waiting for the model: put by the event loop, taken by the model thread.

    It also counts the requests on their way (``expect``): admitted and reading or decoding
    their bodies, not yet put. A batch waiting for company needs to wait only for them.

    A waiting model thread is woken only when what it waits for is there (a first tile, a full
    batch, or the last expected request), not by every request: each wake-up costs the event
    loop a GIL hand-over.
    """

    def __init__(self) -> None:
        self._slices: collections.deque[Slice] = collections.deque()
        self._tiles = 0
        self._want = math.inf  # tiles the waiting thread waits for
        self._until_none_coming = False  # the waiting thread also wakes when nobody is on the way
        self._changed = threading.Condition(threading.Lock())
        self.coming = 0  # requests expected to put soon
        self.closed = False

    def expect(self) -> None:
        with self._changed:
            self.coming += 1

    def unexpect(self) -> None:
        """An expected request will not put after all (answered from the cache, refused, failed)."""
        with self._changed:
            self.coming -= 1
            if self.coming == 0 and self._until_none_coming:
                self._changed.notify()

    def put(self, piece: Slice, expected: bool = False) -> None:
        """Queue ``piece``; ``expected``: it comes from a request counted by ``expect``."""
        with self._changed:
            self._slices.append(piece)
            self._tiles += piece.size
            if expected:
                self.coming -= 1
            if self._tiles >= self._want or (self._until_none_coming and self.coming == 0):
                self._changed.notify()

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def pop(self) -> Slice | None:
        """The oldest slice, or None; raises ``QueueClosed`` once closed."""
        with self._changed:
            if self.closed:
                raise QueueClosed
            if not self._slices:
                return None
            piece = self._slices.popleft()
            self._tiles -= piece.size
            return piece

    def wait(self, tiles: int, timeout_s: float | None, until_none_coming: bool = False) -> None:
        """Block until ``tiles`` tiles are queued, ``timeout_s`` passed (None: no limit), the
        queue closed, or (``until_none_coming``) no request is on its way."""
        with self._changed:
            self._want, self._until_none_coming = tiles, until_none_coming
            try:
                self._changed.wait_for(
                    lambda: self.closed or self._tiles >= tiles or (until_none_coming and self.coming == 0), timeout_s
                )
            finally:
                self._want, self._until_none_coming = math.inf, False

    def __len__(self) -> int:
        return len(self._slices)


def collect_batch(
    queue: TileQueue, max_tiles: int, max_wait_s: float, carry: Slice | None = None, close_early: bool = False
) -> tuple[list[Slice], Slice | None]:
    """Take slices from ``queue`` until ``max_tiles`` tiles or ``max_wait_s`` after the first tile
    arrived (was enqueued). Runs in the model thread; blocks.

    ``carry`` is the rest of a request that did not fit the previous batch; it goes first.
    Waits as long as needed for the first tile, then at most until the deadline; with
    ``close_early``, only while some request is on its way (``TileQueue.expect``): a lone
    request does not wait out the window for company that is not coming. A first tile
    that already waited ``max_wait_s`` (queued while the model was busy) closes the batch with
    whatever is queued now: waiting longer would only leave the model idle. Slices of abandoned
    requests are dropped. Returns the batch and the part of the last slice that did not fit
    (the next call's ``carry``), or None. Raises ``QueueClosed`` when the queue closes.
    """
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    batch: list[Slice] = []
    size = 0
    deadline: float | None = None
    pending = carry
    while size < max_tiles:
        if pending is None:
            pending = queue.pop()
            if pending is None:
                if deadline is None:
                    queue.wait(1, None)
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (close_early and queue.coming <= 0):
                    break
                queue.wait(max_tiles - size, remaining, until_none_coming=close_early)
                continue
        if pending.abandoned:
            pending = None
            continue
        if deadline is None:
            deadline = pending.job.enqueued_at + max_wait_s
        head, pending = pending.split(max_tiles - size)
        batch.append(head)
        size += head.size
    return batch, pending


def dedupe(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique rows (in first-seen order) and, for every input row, its index among them."""
    seen: dict[bytes, int] = {}
    first: list[int] = []
    inverse = np.empty(len(rows), dtype=np.intp)
    for i, row in enumerate(rows):
        j = seen.setdefault(row.tobytes(), len(first))
        if j == len(first):
            first.append(i)
        inverse[i] = j
    if len(first) == len(rows):
        return rows, inverse
    return rows[first], inverse


class BatchObserver(Protocol):
    """What a batcher reports; ``service.metrics`` turns it into Prometheus series."""

    def on_batch(self, tiles: int, unique: int, seconds: float) -> None: ...

    def on_queue_wait(self, seconds: float) -> None: ...

    def on_queue_depth(self, tiles: int) -> None: ...

    def on_rejected(self, reason: str, tiles: int) -> None: ...


@dataclass
class BatchStats:
    """Running totals of one batcher, for tests and ``/v1/models``."""

    batches: int = 0  # model calls made (warm-up excluded)
    tiles: int = 0  # tiles answered by those calls, duplicates included
    unique_tiles: int = 0  # rows actually computed
    failed_batches: int = 0
    batch_sizes: collections.Counter = field(default_factory=collections.Counter)  # tiles -> batches
    rejected: collections.Counter = field(default_factory=collections.Counter)  # reason -> tiles


class Batcher:
    """Queue, worker task and accounting for one (model, operation).

    Args:
        name: shown in logs and errors, e.g. ``"dcae-s48/encode"``.
        infer: the model call, run in the batcher's model thread; must return one row per input row.
        max_batch_tiles: most tiles per model call.
        max_wait_s: how long a batch stays open for more tiles after its first one.
        max_queue_tiles: most tiles waiting; beyond it requests get ``Overloaded``.
        warmup: rows for the warm-up before serving, or None: one call with all of them, then
            one at every smaller batch size (see ``_warm_up``).
        model_lock: held around every model call; the batchers of one model share one, so
            their calls never overlap (they would only fight over the same cores).
        close_early: a batch waiting for company closes as soon as no request is on its way
            (``expect``), instead of at ``max_wait_s``.
        observer: receives batch, wait, depth and rejection events.
    """

    def __init__(
        self,
        name: str,
        infer: Infer,
        *,
        max_batch_tiles: int,
        max_wait_s: float,
        max_queue_tiles: int,
        warmup: np.ndarray | None = None,
        model_lock: threading.Lock | None = None,
        close_early: bool = True,
        observer: BatchObserver | None = None,
    ) -> None:
        if max_batch_tiles < 1 or max_wait_s < 0 or max_queue_tiles < 1:
            raise ValueError(
                f"batcher {name}: need max_batch_tiles >= 1, max_wait_s >= 0 and max_queue_tiles >= 1, "
                f"got {max_batch_tiles}, {max_wait_s}, {max_queue_tiles}"
            )
        self.name = name
        self.infer = infer
        self.max_batch_tiles = max_batch_tiles
        self.max_wait_s = max_wait_s
        self.max_queue_tiles = max_queue_tiles
        self.stats = BatchStats()
        self.ready = asyncio.Event()  # set once warm-up has run (even if it failed)
        self.warmup_error: str | None = None
        self._warmup = warmup
        self._model_lock = model_lock if model_lock is not None else threading.Lock()
        self.observer = observer  # may be set until the worker starts
        self._queue = TileQueue()
        self.close_early = close_early
        self._queued = 0  # tiles waiting, the bound's measure
        self._jobs: set[_Job] = set()
        self._accepting = True
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tiles_per_s = 0.0  # moving average of the observed throughput: admission and Retry-After
        self._busy_since: float | None = None  # end of the last batch, when tiles were still queued (model thread)
        self.calling_since: float | None = None  # time.monotonic() when the running model call began

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the model thread (warm-up first); call from the running event loop."""
        if self._thread is not None:
            raise RuntimeError(f"batcher {self.name} already started")
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._work, name=f"tessera {self.name}", daemon=True)
        self._thread.start()

    @property
    def queued_tiles(self) -> int:
        return self._queued

    @property
    def accepting(self) -> bool:
        return self._accepting

    async def drain(self, grace_s: float) -> int:
        """Stop accepting; wait up to ``grace_s`` for accepted requests; stop the worker.

        Returns the number of requests that did not finish in time (they get ``ShuttingDown``).
        """
        self._accepting = False
        pending = [job.future for job in self._jobs if not job.future.done()]
        if pending:
            logger.info("%s: draining %d request(s), up to %.1f s", self.name, len(pending), grace_s)
            await asyncio.wait(pending, timeout=max(grace_s, 0))
        return await self.stop()

    async def stop(self) -> int:
        """Stop the model thread (a call in progress runs to its end, its answers unsent);
        requests still waiting get ``ShuttingDown``."""
        self._accepting = False
        self._queue.close()
        left = [job for job in self._jobs if not job.future.done()]
        for job in left:
            self._reject("shutdown", job.remaining)
            job.fail(ShuttingDown(f"{self.name}: the server shut down before this request was computed; retry it"))
        return len(left)

    # -- submitting ------------------------------------------------------------------------

    @contextlib.contextmanager
    def expect(self) -> Iterator[Ticket]:
        """Count a request as on its way for as long as it reads and decodes its body; pass the
        ticket to ``submit``. A batch waiting for company waits only for requests on their way."""
        ticket = Ticket()
        self._queue.expect()
        try:
            yield ticket
        finally:
            if not ticket.used:
                ticket.used = True
                self._queue.unexpect()

    async def submit(
        self, rows: np.ndarray, *, deadline: float, gone: Awaitable | None = None, ticket: Ticket | None = None
    ) -> np.ndarray:
        """Compute ``rows`` in batches with other requests; the results, in order.

        Args:
            rows: the request's inputs, one row per tile (at least one).
            deadline: ``time.monotonic()`` by which the answer must be there, else 504.
            gone: completes when the client disconnects; its tiles are then dropped.

        Raises:
            Overloaded, ShuttingDown, DeadlineExceeded, ClientDisconnected, InferenceFailed.
        """
        n = len(rows)
        if n == 0:
            raise ValueError("submit needs at least one row")
        if not self._accepting:
            self._reject("shutdown", n)
            raise ShuttingDown(f"{self.name}: the server is shutting down; retry on another instance", retry_after_s=5)
        if self._queued + n > self.max_queue_tiles:
            self._reject("queue_full", n)
            raise Overloaded(
                f"{self.name}: {self._queued} tiles are queued (limit {self.max_queue_tiles}) and {n} more do "
                f"not fit; retry later or send fewer tiles per request",
                retry_after_s=self._retry_after_s(),
            )
        now = time.monotonic()
        if deadline <= now:
            self._reject("deadline", n)
            raise DeadlineExceeded(f"{self.name}: the request deadline passed before it was queued")
        expected_s = self._expected_wait_s(n)
        if now + ADMISSION_MARGIN * expected_s > deadline:
            self._reject("queue_full", n)
            raise Overloaded(
                f"{self.name}: {self._queued} tiles are queued, about {expected_s:.1f} s of work at the recent "
                f"{self._tiles_per_s:.0f} tiles/s, more than the {deadline - now:.1f} s left before this request's "
                f"deadline; retry later or send fewer tiles per request",
                retry_after_s=self._retry_after_s(),
            )
        job = _Job(rows, asyncio.get_running_loop().create_future(), deadline)
        self._jobs.add(job)
        self._queued += n
        job.future.add_done_callback(lambda _: self._settled(job))
        expected = ticket is not None and not ticket.used
        if expected:
            ticket.used = True
        self._queue.put(Slice(job, 0, n), expected)
        self._depth_changed()

        gone_future = asyncio.ensure_future(gone) if gone is not None else None
        try:
            waiters = {job.future} if gone_future is None else {job.future, gone_future}
            await asyncio.wait(waiters, timeout=max(0.0, deadline - time.monotonic()), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._abandon(job, "cancelled")
            raise
        finally:
            if gone_future is not None and gone is not gone_future:
                gone_future.cancel()
        if job.future.done():
            return job.future.result()
        if gone_future is not None and gone_future.done():
            self._abandon(job, "disconnected")
            raise ClientDisconnected(f"{self.name}: the client disconnected; its tiles were not computed")
        self._abandon(job, "deadline")
        raise DeadlineExceeded(
            f"{self.name}: no result within the request timeout ({job.remaining} of {n} tiles not computed); "
            f"retry later, send fewer tiles, or raise TESSERA_REQUEST_TIMEOUT_S"
        )

    def _abandon(self, job: _Job, reason: str) -> None:
        if not job.future.done():
            self._reject(reason, job.remaining)
            job.future.cancel()

    def _settled(self, job: _Job) -> None:
        """Done callback of every job: tiles it still had in the queue stop counting."""
        self._take(job, job.queued)
        self._jobs.discard(job)

    def _take(self, job: _Job, n: int) -> None:
        n = min(n, job.queued)
        if n:
            job.queued -= n
            self._queued -= n
            self._depth_changed()

    def _reject(self, reason: str, tiles: int) -> None:
        self.stats.rejected[reason] += tiles
        if self.observer is not None:
            self.observer.on_rejected(reason, tiles)

    def _depth_changed(self) -> None:
        if self.observer is not None:
            self.observer.on_queue_depth(self._queued)

    def _expected_wait_s(self, n: int) -> float:
        """Rough time until ``n`` more tiles would be computed: the queue ahead of them and their
        own rows at the recent throughput, plus one batch window. 0 with nothing queued (or no
        measurement yet): a request that waits for nobody is always tried, which also renews a
        throughput measured during a hiccup."""
        if self._tiles_per_s <= 0 or self._queued == 0:
            return 0.0
        return (self._queued + n) / self._tiles_per_s + self.max_wait_s

    def _retry_after_s(self) -> float:
        """Rough time to work off the queue, 1 to 60 s."""
        if self._tiles_per_s <= 0:
            return 1.0
        return min(60.0, max(1.0, self._queued / self._tiles_per_s))

    # -- the model thread ------------------------------------------------------------------

    def _work(self) -> None:
        """The model thread: warm up, then collect and compute batches until the queue closes.
        What the event loop must do (answers, accounting) goes to it with call_soon_threadsafe."""
        self._warm_up()
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

    def _warm_up(self) -> None:
        """One call with every warm-up row (it proves a full batch fits in memory), then one at
        each smaller batch size. The first call at a batch size leaves long-lived allocations
        behind (oneDNN primitives and their buffers, in this thread's malloc arena). Made while
        serving, they scattered through the arena until, in about one server process in five
        after a sweep of batch sizes, each call's activations got a sub-heap of their own that
        glibc unmapped after every call: ~58 page faults per tile and ~30% slower model calls.
        Made here, before any request, they stay out of the way (no such process in ten). The
        price is memory: ~2.5 MiB per batch size for dcae-s48 on a CPU."""
        error = None
        try:
            if self._warmup is not None:
                start = time.monotonic()
                with self._model_lock:
                    self.infer(self._warmup)
                    for n in range(1, len(self._warmup)):
                        self.infer(self._warmup[:n])
                logger.info("%s: warmed up at batch sizes 1 to %d in %.3f s", self.name, len(self._warmup), time.monotonic() - start)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"
            logger.error("%s: warm-up failed: %s", self.name, error)

        def warmed() -> None:
            self.warmup_error = error
            self.ready.set()

        try:
            self._on_loop(warmed)
        except LoopGone:
            pass

    def _process(self, batch: list[Slice]) -> None:
        """Compute one batch (model thread). Pieces whose request is gone or past its deadline
        are left out; the event loop settles them (``_taken``)."""
        now = time.monotonic()
        live = [piece for piece in batch if not piece.abandoned and now <= piece.job.deadline]
        self._on_loop(self._taken, batch, now)
        if not live:
            return
        rows = np.concatenate([piece.tiles for piece in live]) if len(live) > 1 else live[0].tiles
        unique, inverse = dedupe(rows)
        with self._model_lock:
            start = self.calling_since = time.monotonic()
            try:
                out = self.infer(unique)
                if not isinstance(out, np.ndarray) or len(out) != len(unique):
                    got = f"{len(out)} rows" if isinstance(out, np.ndarray) else type(out).__name__
                    raise RuntimeError(f"model returned {got} for {len(unique)} inputs")
            except Exception as exc:
                self._on_loop(self._failed, live, len(unique), exc)
                return
            finally:
                self.calling_since = None
            end = time.monotonic()
        seconds = end - start
        # The throughput the queue sees: from the end of the previous batch when tiles were
        # already waiting then (collecting, handing over and CPU taken by others count), else
        # from this call's start. A machine that gets slower lowers it at once.
        busy = end - (self._busy_since if self._busy_since is not None else start)
        self._busy_since = end if len(self._queue) else None
        out = out[inverse] if len(unique) != len(rows) else out
        self._on_loop(self._computed, live, out, len(unique), seconds, busy)

    # -- back on the event loop ------------------------------------------------------------

    def _taken(self, batch: list[Slice], now: float) -> None:
        """A batch left the queue: its tiles stop counting; pieces past their deadline fail."""
        for piece in batch:
            self._take(piece.job, piece.size)
            if piece.abandoned:
                continue
            if now > piece.job.deadline:
                self._reject("deadline", piece.job.remaining)
                piece.job.fail(DeadlineExceeded(f"{self.name}: the request waited past its deadline; its tiles were not computed"))
            elif self.observer is not None:
                self.observer.on_queue_wait(now - piece.job.enqueued_at)

    def _computed(self, live: list[Slice], out: np.ndarray, unique: int, seconds: float, busy: float) -> None:
        self._record(len(out), unique, seconds, busy)
        offset = 0
        for piece in live:
            piece.job.deliver(piece.start, out[offset : offset + piece.size])
            offset += piece.size

    def _failed(self, live: list[Slice], unique: int, exc: Exception) -> None:
        self.stats.failed_batches += 1
        self._reject("error", sum(piece.size for piece in live))
        logger.error("%s: model call on %d tiles failed: %s: %s", self.name, unique, type(exc).__name__, exc)
        self._fail_all(live, InferenceFailed(
            f"{self.name}: the model call for this request's batch failed ({type(exc).__name__}: {exc}); "
            f"nothing was computed, retry the request"
        ))

    @staticmethod
    def _fail_all(pieces: list[Slice], error: Exception) -> None:
        for piece in pieces:
            piece.job.fail(error)

    def _record(self, tiles: int, unique: int, seconds: float, busy: float | None = None) -> None:
        self.stats.batches += 1
        self.stats.tiles += tiles
        self.stats.unique_tiles += unique
        self.stats.batch_sizes[tiles] += 1
        busy = seconds if busy is None else busy
        if busy > 0:
            rate = unique / busy
            self._tiles_per_s = rate if self._tiles_per_s == 0 else 0.8 * self._tiles_per_s + 0.2 * rate
        if self.observer is not None:
            self.observer.on_batch(tiles, unique, seconds)
