"""The tile queue and batch collection: the part of batching that runs in a model thread.

Requests put their tiles as ``Slice``s of a ``Job``; a model thread takes them with
``collect_batch``. Batches count tiles, not requests. A batch closes when it holds
``max_tiles`` tiles, ``max_wait_s`` after its first tile arrived, or (``close_early``) as soon
as no other request is on its way (admitted and still reading its body: ``TileQueue.expect``),
whichever comes first. A request larger than the room left is split; the rest opens the next
batch, so requests are served in arrival order and reassembled in order.

Time comes from the queue's ``Clock``, so tests drive the batch window with a fake one.
"""

from __future__ import annotations

import asyncio
import collections
import math
import threading
from collections.abc import Hashable, Sequence

import numpy as np

from tessera.service.runtime.clock import MONOTONIC, Clock


class Job:
    """One submitted request: its rows (and their keys), where the results go, how to tell its waiter."""

    __slots__ = ("rows", "keys", "future", "deadline", "enqueued_at", "queued", "remaining", "out")

    def __init__(self, rows: np.ndarray, keys: Sequence[Hashable] | None, future: asyncio.Future,
                 deadline: float, enqueued_at: float) -> None:
        self.rows = rows
        self.keys = keys  # one per row: equal keys, equal rows (computed once per batch); None: the rows' bytes
        self.future = future
        self.deadline = deadline  # on the batcher's clock: after it, the request is answered 504
        self.enqueued_at = enqueued_at
        self.queued = len(rows)  # rows still waiting in the queue (not yet taken into a batch)
        self.remaining = len(rows)  # rows without a result yet
        self.out: np.ndarray | None = None

    def deliver(self, start: int, rows: np.ndarray) -> None:
        if self.future.done():
            return
        if self.out is None:
            if start == 0 and len(rows) == len(self.rows):
                self.future.set_result(rows)  # the whole request in one batch: no copy
                return
            self.out = np.empty((len(self.rows), *rows.shape[1:]), dtype=rows.dtype)
        self.out[start : start + len(rows)] = rows
        self.remaining -= len(rows)
        if self.remaining == 0:
            self.future.set_result(self.out)

    def fail(self, exc: Exception) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


class Slice:
    """Rows ``[start, stop)`` of one job; what the queue holds and batches are made of."""

    __slots__ = ("job", "start", "stop")

    def __init__(self, job: Job, start: int, stop: int) -> None:
        self.job, self.start, self.stop = job, start, stop

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Slice) and (self.job, self.start, self.stop) == (other.job, other.start, other.stop)

    __hash__ = None  # type: ignore[assignment]

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def rows(self) -> np.ndarray:
        return self.job.rows[self.start : self.stop]

    @property
    def keys(self) -> Sequence[Hashable] | None:
        return None if self.job.keys is None else self.job.keys[self.start : self.stop]

    @property
    def abandoned(self) -> bool:
        """The request already has its answer (failed, timed out or gone): skip its rows."""
        return self.job.future.done()

    def split(self, n: int) -> tuple[Slice, Slice | None]:
        """The first ``n`` rows and the rest (None when nothing is left)."""
        if n >= self.size:
            return self, None
        return Slice(self.job, self.start, self.start + n), Slice(self.job, self.start + n, self.stop)


class Ticket:
    """A request counted as on its way to a batcher (``Batcher.expect``), until it submits or
    gives the ticket back; leaving its ``with`` block gives it back."""

    __slots__ = ("_queue", "used")

    def __init__(self, queue: TileQueue) -> None:
        self._queue = queue
        self.used = False
        queue.expect()

    def __enter__(self) -> Ticket:
        return self

    def __exit__(self, *exc_info) -> None:
        self.give_back()

    def give_back(self) -> None:
        """The request will not submit after all (answered from the cache, refused, failed)."""
        if not self.used:
            self.used = True
            self._queue.unexpect()

    def redeem(self) -> bool:
        """The request submits now: True when its ticket still counted it."""
        if self.used:
            return False
        self.used = True
        return True


class QueueClosed(Exception):
    """The batcher stopped: its model thread takes no more batches."""


class TileQueue:
    """Slices waiting for the model: put by the event loop, taken by the model thread.

    It also counts the requests on their way (``expect``): admitted and reading or decoding
    their bodies, not yet put. A batch waiting for company needs to wait only for them.

    A waiting model thread is woken only when what it waits for is there (a first tile, a full
    batch, or the last expected request), not by every request: each wake-up costs the event
    loop a GIL hand-over.
    """

    def __init__(self, clock: Clock = MONOTONIC) -> None:
        self.clock = clock
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
        """An expected request will not put after all."""
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

    def wait(self, tiles: int, deadline: float | None, until_none_coming: bool = False) -> None:
        """Block until ``tiles`` tiles are queued, the clock reaches ``deadline`` (None: no
        limit), the queue closed, or (``until_none_coming``) no request is on its way."""
        with self._changed:
            self._want, self._until_none_coming = tiles, until_none_coming
            try:
                self.clock.wait_for(
                    self._changed,
                    lambda: self.closed or self._tiles >= tiles or (until_none_coming and self.coming == 0),
                    deadline,
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
                if queue.clock.now() >= deadline or (close_early and queue.coming <= 0):
                    break
                queue.wait(max_tiles - size, deadline, until_none_coming=close_early)
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


def dedupe(pieces: list[Slice]) -> tuple[np.ndarray, np.ndarray | None]:
    """The rows of ``pieces`` with equal keys computed once: the distinct rows (first seen
    first), and for every row its index among them (None when all are distinct).

    Keys are the ones the requests gave (tile hashes, computed once for the cache), else the
    rows' own bytes."""
    rows = np.concatenate([piece.rows for piece in pieces]) if len(pieces) > 1 else pieces[0].rows
    keys: list[Hashable] = []
    for piece in pieces:
        given = piece.keys
        keys.extend(given if given is not None else [row.tobytes() for row in piece.rows])
    first: dict[Hashable, int] = {}
    picked: list[int] = []
    inverse = np.empty(len(rows), dtype=np.intp)
    for i, key in enumerate(keys):
        j = first.setdefault(key, len(picked))
        if j == len(picked):
            picked.append(i)
        inverse[i] = j
    if len(picked) == len(rows):
        return rows, None
    return rows[picked], inverse
