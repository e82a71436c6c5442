"""SIGTERM under load against a real ``tessera serve``: nothing admitted is lost.

Clients behave like a load balancer's: they keep sending until the server answers 503
``shutting_down``, then go elsewhere. Every request the server admitted before the signal must
be answered 200; requests after it get a polite 503 (Retry-After, Connection: close) while the
port stays open; no request goes unanswered; the process exits 0 once drained.

The signal comes while every client's request waits in one open batch. ``make test`` holds that
batch open long enough (and the port open after the drain long enough) for a busy machine to
get every request there and every client its 503; measured (``make reliability``), the batch
window is short and no client may find the port closed either.
"""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from reliability_load import CONNECT_ERROR, LOST, BackgroundLoad
from tessera.testing.bodies import NPY, npy, random_tiles
from tessera.testing.measuring import measuring
from tessera.testing.serve import local_server
from tessera.testing.waiting import wait_until

CLIENTS = 16  # each sends 2 tiles at a time


@pytest.mark.slow
def test_sigterm_under_load_loses_no_request(checkpoint_dir, tmp_path, measurements):
    # make test: the batch stays open 5 s, and the port 15 s after the signal, 10 s or more after the batch
    window_ms, delay_s = ("250", "1") if measuring() else ("5000", "15")
    env = {"TESSERA_MAX_WAIT_MS": window_ms, "TESSERA_BATCH_CLOSE_EARLY": "false",  # the clients' tiles wait in one batch
           "TESSERA_MAX_BATCH_TILES": "64", "TESSERA_CACHE_MAX_BYTES": "0",
           "TESSERA_SHUTDOWN_DELAY_S": delay_s, "TESSERA_SHUTDOWN_GRACE_S": "60"}
    server = local_server(checkpoint_dir, tmp_path / "server.log", **env)

    def make(i: int):
        return "/v1/encode", npy(random_tiles(2, seed=i)), {"Content-Type": NPY, "Accept": NPY}

    def refused(shot) -> bool:  # a load balancer takes the instance out on the first 503 (or a closed port)
        return shot.status in (503, CONNECT_ERROR)

    def draining():
        ready = httpx.get(server.url + "/readyz", timeout=10)
        return ready if ready.status_code == 503 else None

    with BackgroundLoad(server.url, make, clients=CLIENTS, until=refused) as load:
        if measuring():  # in steady state
            load.wait_for(lambda shots: sum(s.status == 200 for s in shots) >= 40, timeout_s=60)
        wait_until(lambda: server.metric("tessera_queue_depth_tiles", model="tiny", op="encode") == 2 * CLIENTS,
                   what="every client's request waits in one open batch")
        signalled_at = time.monotonic()  # every client's request is admitted and waits in the open batch
        server.process.send_signal(signal.SIGTERM)
        ready = wait_until(draining, what="/readyz answers 503 while draining")
        exit_code = server.process.wait(timeout=120)
        exited_at = time.monotonic()
        load.wait_for(lambda shots: len([s for s in shots if s.status in (503, CONNECT_ERROR)]) >= CLIENTS, timeout_s=60)
    server.stop()

    shots = load.shots
    in_flight = [s for s in shots if s.sent < signalled_at < s.done]
    refusals = [s for s in shots if s.status == 503]
    # a client that found the port closed after the drain never reached the server: on a busy
    # machine one may be that late even after the shutdown delay (measured, none may)
    late = [s for s in shots if s.status == CONNECT_ERROR and s.sent > signalled_at]
    lost = [s for s in shots if s.status == LOST or (s.status == CONNECT_ERROR and (measuring() or s not in late))]
    assert not lost, f"{len(lost)} requests got no answer: {lost[:3]}"
    assert {s.status for s in shots} - {CONNECT_ERROR} == {200, 503}
    assert all(s.code == "shutting_down" and s.retry_after for s in refusals), refusals[:3]
    completed = [s for s in in_flight if s.status == 200]
    assert len(in_flight) == CLIENTS and len(completed) == CLIENTS, [(s.sent - signalled_at, s.status) for s in in_flight]
    assert ready.status_code == 503 and ready.json()["code"] == "not_ready"
    assert exit_code == 0
    log = server.log.read_text()
    assert "Traceback" not in log and "still in flight" not in log
    measurements["sigterm"] = {
        "requests": len(shots), "in_flight_at_signal": len(in_flight), "completed_after_signal": len(completed),
        "refused_503_after_signal": len(refusals), "lost": len(lost), "exit_code": exit_code,
        "exit_after_s": round(exited_at - signalled_at, 2),
    }
