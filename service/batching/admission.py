"""Admission to one batcher's queue: the bound, the throughput estimate and Retry-After.

The queue is bounded in tiles: a request that does not fit is refused at once (``Overloaded``,
503 with Retry-After) instead of queueing without bound. So is a request that would not be
computed before its deadline at the throughput the queue has recently seen: better a quick 503
than a slow 504.
"""

from __future__ import annotations

from tessera.service.errors import DeadlineExceeded, Overloaded, TesseraError

# A request is admitted only if its expected wait, times this, fits before its deadline: under
# overload the model gets less CPU than when its throughput was measured, so leave room.
ADMISSION_MARGIN = 2.0
SMOOTHING = 0.2  # weight of the newest batch in the throughput's moving average


class Admission:
    """The queue bound and the throughput estimate of one batcher (event loop only).

    Args:
        name: the batcher's name, for error details.
        max_queue_tiles: most tiles waiting.
        max_wait_s: the batch window, which every wait estimate includes.
    """

    def __init__(self, name: str, max_queue_tiles: int, max_wait_s: float) -> None:
        self.name = name
        self.max_queue_tiles = max_queue_tiles
        self.max_wait_s = max_wait_s
        self.queued = 0  # tiles waiting, the bound's measure
        self.tiles_per_s = 0.0  # moving average of the throughput the queue sees

    def refusal(self, n: int, deadline: float, now: float) -> tuple[str, TesseraError] | None:
        """Why ``n`` more tiles due by ``deadline`` are not taken now, as (rejection reason,
        error to raise), or None when they are."""
        if self.queued + n > self.max_queue_tiles:
            return "queue_full", Overloaded(
                f"{self.name}: {self.queued} tiles are queued (limit {self.max_queue_tiles}) and {n} more do "
                f"not fit; retry later or send fewer tiles per request",
                retry_after_s=self.retry_after_s(),
            )
        if deadline <= now:
            return "deadline", DeadlineExceeded(f"{self.name}: the request deadline passed before it was queued")
        expected_s = self.expected_wait_s(n)
        if now + ADMISSION_MARGIN * expected_s > deadline:
            return "queue_full", Overloaded(
                f"{self.name}: {self.queued} tiles are queued, about {expected_s:.1f} s of work at the recent "
                f"{self.tiles_per_s:.0f} tiles/s, more than the {deadline - now:.1f} s left before this request's "
                f"deadline; retry later or send fewer tiles per request",
                retry_after_s=self.retry_after_s(),
            )
        return None

    def observed(self, tiles: int, busy_s: float) -> None:
        """A batch computed ``tiles`` distinct tiles in ``busy_s`` of the queue's time."""
        if busy_s > 0:
            rate = tiles / busy_s
            self.tiles_per_s = rate if self.tiles_per_s == 0 else (1 - SMOOTHING) * self.tiles_per_s + SMOOTHING * rate

    def expected_wait_s(self, n: int) -> float:
        """Rough time until ``n`` more tiles would be computed: the queue ahead of them and their
        own rows at the recent throughput, plus one batch window. 0 with nothing queued (or no
        measurement yet): a request that waits for nobody is always tried, which also renews a
        throughput measured during a hiccup."""
        if self.tiles_per_s <= 0 or self.queued == 0:
            return 0.0
        return (self.queued + n) / self.tiles_per_s + self.max_wait_s

    def retry_after_s(self) -> float:
        """Rough time to work off the queue, 1 to 60 s."""
        if self.tiles_per_s <= 0:
            return 1.0
        return min(60.0, max(1.0, self.queued / self.tiles_per_s))
