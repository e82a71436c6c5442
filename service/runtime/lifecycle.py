"""A server's life in one place: loading -> ready -> draining -> stopped, and the requests it
admitted on the way.

    LOADING   the models load and their batchers warm up; requests are admitted (and wait for
              the warm-up), /readyz answers 503
    READY     every batcher warmed up; /readyz answers 200
    DRAINING  SIGTERM or the app's shutdown: new requests get 503 shutting_down, admitted ones
              run to their end, /readyz answers 503
    STOPPED   the batchers stopped; whatever was left got 503 shutting_down

The app's lifespan creates one per run and moves it on; the batchers report their warm-up to it
and refuse work once it is stopped; ``tessera.service.runtime.shutdown`` drains it on SIGTERM and waits for the
requests in flight; ``/readyz`` and the pipeline's admission read it.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Callable

from tessera.service.errors import Overloaded, ShuttingDown


class Phase(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"


class Lifecycle:
    """Phase, warm-up and in-flight requests of one server.

    A request first uploads (``upload()``: its body is read, bounded by ``max_uploads``), then is
    admitted (``admit()``: bounded by ``max_in_flight``) for the work that needs the models. So a
    client that sends its body slowly, or never, holds an upload slot, never a slot of the work:
    uploads cannot starve the requests whose bodies have arrived.

    Args:
        max_in_flight: most requests admitted at once (``TESSERA_MAX_REQUESTS_IN_FLIGHT``);
            None: no limit.
        max_uploads: most requests reading their body at once (``TESSERA_MAX_UPLOADS_IN_FLIGHT``);
            None: no limit.
    """

    def __init__(self, max_in_flight: int | None = None, max_uploads: int | None = None) -> None:
        self.phase = Phase.LOADING
        self.max_in_flight = max_in_flight
        self.in_flight = 0  # admitted requests not answered yet
        self.max_uploads = max_uploads
        self.uploading = 0  # requests reading their body
        self.drain_started_at: float | None = None  # time.monotonic() of the drain's start
        self._warming: list[str] = []  # batchers whose warm-up has not ended, in start order
        self.on_ready: Callable[[], None] | None = None  # called once, when the server becomes ready
        self._failed: dict[str, str] = {}  # batcher -> why its warm-up failed
        self._idle: asyncio.Future | None = None  # set when in_flight drops to 0 (wait_idle)

    @property
    def accepting(self) -> bool:
        """Whether new requests are admitted."""
        return self.phase in (Phase.LOADING, Phase.READY)

    # -- moving on -------------------------------------------------------------------------

    def warming(self, name: str) -> None:
        """Batcher ``name`` started its warm-up; the server is not ready until it ends."""
        self._warming.append(name)

    def warmed(self, name: str, error: str | None = None) -> None:
        """Batcher ``name`` ended its warm-up (``error``: why it failed). The last one without
        a failure makes a loading server ready."""
        if name in self._warming:
            self._warming.remove(name)
        if error is not None:
            self._failed[name] = error
        if self.phase is Phase.LOADING and not self._warming and not self._failed:
            self.phase = Phase.READY
            if self.on_ready is not None:
                self.on_ready()

    def drain(self) -> bool:
        """Stop admitting requests; True when this call started the drain (safe in a signal
        handler: it only sets fields)."""
        if not self.accepting:
            return False
        self.phase = Phase.DRAINING
        self.drain_started_at = time.monotonic()
        return True

    def stop(self) -> None:
        self.drain()
        self.phase = Phase.STOPPED

    # -- what the server asks ----------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Why the server should not get traffic now, or None once it is ready."""
        if self.phase is Phase.READY:
            return None
        if self.phase is not Phase.LOADING:
            return "shutting down"
        if self._failed:
            name, error = next(iter(self._failed.items()))
            return f"{name} failed its warm-up: {error}"
        if self._warming:
            return f"{self._warming[0]} is warming up"
        return "models are loading"

    def upload(self) -> _Slot:
        """Count one request as reading its body (``with lifecycle.upload():``); 503 while draining
        or at the limit."""
        if not self.accepting:
            raise ShuttingDown("the server is shutting down; retry on another instance", retry_after_s=5)
        if self.max_uploads is not None and self.uploading >= self.max_uploads:
            raise Overloaded(
                f"{self.uploading} requests are sending their body (limit {self.max_uploads}, "
                f"TESSERA_MAX_UPLOADS_IN_FLIGHT); retry later"
            )
        self.uploading += 1
        return _Slot(self._uploaded)

    def admit(self, uploaded: bool = False) -> _Slot:
        """Count one request as in flight for its whole life (``with lifecycle.admit():``); 503
        while draining or at the limit. A request whose upload began before the drain
        (``uploaded``) is still admitted while draining: the drain waits for it."""
        if not self.accepting and not (uploaded and self.phase is Phase.DRAINING):
            raise ShuttingDown("the server is shutting down; retry on another instance", retry_after_s=5)
        if self.max_in_flight is not None and self.in_flight >= self.max_in_flight:
            raise Overloaded(
                f"{self.in_flight} requests are in progress (limit {self.max_in_flight}, "
                f"TESSERA_MAX_REQUESTS_IN_FLIGHT); retry later"
            )
        self.in_flight += 1
        return _Slot(self._left)

    def _left(self) -> None:
        self.in_flight -= 1
        self._maybe_idle()

    def _uploaded(self) -> None:
        self.uploading -= 1
        self._maybe_idle()

    def _maybe_idle(self) -> None:
        if self.in_flight == 0 and self.uploading == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def wait_idle(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for every admitted or uploading request to be answered; how
        many admitted ones were not."""
        if self.in_flight or self.uploading:
            self._idle = asyncio.get_running_loop().create_future()
            try:
                await asyncio.wait_for(asyncio.shield(self._idle), max(timeout_s, 0.0))
            except TimeoutError:
                pass
            finally:
                self._idle = None
        return self.in_flight


class _Slot:
    """One admitted or uploading request; leaving the ``with`` block gives its slot back (a class,
    not a generator: it runs for every request)."""

    __slots__ = ("_release",)

    def __init__(self, release: Callable[[], None]) -> None:
        self._release = release

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info) -> None:
        self._release()
