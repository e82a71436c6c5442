"""Graceful shutdown of ``tessera serve``: SIGTERM starts a drain, not an exit.

On the first SIGTERM (or SIGINT) the server keeps its port open and stops admitting work:

- ``/readyz`` answers 503, so a load balancer takes the instance out of rotation;
- new ``/v1/encode`` and ``/v1/decode`` requests get 503 ``shutting_down`` with ``Retry-After``
  and ``Connection: close``: a proxy retries them on another instance, and keep-alive clients
  reconnect;
- every request admitted before the signal runs to completion.

When no admitted request is left (and at least ``TESSERA_SHUTDOWN_DELAY_S`` has passed), or
after ``TESSERA_SHUTDOWN_GRACE_S`` at the latest, uvicorn closes the port and the app's lifespan
stops the batchers. The process then exits 0: the drain was the expected end. A second signal
during the drain is uvicorn's own: stop now, exit by the signal.
"""

from __future__ import annotations

import logging
import time
from types import FrameType
from typing import Any

import uvicorn

from tessera.service.runtime.lifecycle import Lifecycle, Phase
from tessera.service.runtime.settings import Settings

logger = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    """A ``uvicorn.Server`` whose first shutdown signal drains the app's ``Lifecycle`` before exiting."""

    def __init__(self, config: uvicorn.Config, app: Any, settings: Settings) -> None:  # app: its state.lifecycle drains
        super().__init__(config)
        self.app = app
        self.settings = settings
        self._announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # a signal handler: Lifecycle.drain only sets fields; logging happens on the loop (on_tick)
        if self.should_exit or not self.app.state.tessera.lifecycle.drain():
            super().handle_exit(sig, frame)  # a second signal, or already stopping: exit now

    async def on_tick(self, counter: int) -> bool:
        if self.app.state.tessera.lifecycle.phase is Phase.DRAINING and not self.should_exit:
            self._check_drain(self.app.state.tessera.lifecycle)
        return await super().on_tick(counter)

    def _check_drain(self, lifecycle: Lifecycle) -> None:
        in_flight = lifecycle.in_flight
        if not self._announced:
            self._announced = True
            logger.info(
                "shutdown signal: draining %d request(s) in flight (up to %.1f s); new requests get 503",
                in_flight, self.settings.shutdown_grace_s,
            )
        elapsed = time.monotonic() - lifecycle.drain_started_at
        drained = in_flight == 0 and elapsed >= self.settings.shutdown_delay_s
        if not drained and elapsed < self.settings.shutdown_grace_s:
            return
        if in_flight:
            logger.warning("%d request(s) still in flight after the %.1f s grace period", in_flight, self.settings.shutdown_grace_s)
        else:
            logger.info("drained in %.2f s; closing the port", elapsed)
        self.should_exit = True
