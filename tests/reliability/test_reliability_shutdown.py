"""SIGTERM under load against a real ``tessera serve``: nothing admitted is lost.

Clients behave like a load balancer's: they keep sending until the server answers 503
``shutting_down``, then go elsewhere. Every request the server admitted before the signal must
be answered 200; requests after it get a polite 503 (Retry-After, Connection: close) while the
port stays open; no connection is reset or refused; the process exits 0 once drained.
"""

from __future__ import annotations

import signal
import time

import httpx

from reliability_load import CONNECT_ERROR, LOST, BackgroundLoad
from service_helpers import NPY, ServerProcess, npy, random_tiles


CLIENTS = 16  # each sends 2 tiles at a time


def test_sigterm_under_load_loses_no_request(checkpoint_dir, tmp_path, measurements):
    env = {"TESSERA_MAX_WAIT_MS": "250", "TESSERA_BATCH_CLOSE_EARLY": "false",  # the clients' tiles wait in one batch
           "TESSERA_MAX_BATCH_TILES": "64", "TESSERA_CACHE_MAX_BYTES": "0",
           "TESSERA_SHUTDOWN_DELAY_S": "1", "TESSERA_SHUTDOWN_GRACE_S": "15"}
    server = ServerProcess(checkpoint_dir, tmp_path / "server.log", **env)

    def make(i: int):
        return "/v1/encode", npy(random_tiles(2, seed=i)), {"Content-Type": NPY, "Accept": NPY}

    def refused(shot) -> bool:  # a load balancer takes the instance out on the first 503
        return shot.status == 503

    with BackgroundLoad(server.url, make, clients=CLIENTS, until=refused) as load:
        load.wait_for(lambda shots: sum(s.status == 200 for s in shots) >= 40)
        deadline = time.monotonic() + 20
        while server.metric("tessera_queue_depth_tiles", model="tiny", op="encode") < 2 * CLIENTS:
            assert time.monotonic() < deadline, "the clients' requests never all waited in one batch"
        signalled_at = time.monotonic()  # every client's request is admitted and waits in the open batch
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        ready = httpx.get(server.url + "/readyz", timeout=5)
        exit_code = server.process.wait(timeout=30)
        exited_at = time.monotonic()
        load.wait_for(lambda shots: len([s for s in shots if s.status == 503]) == CLIENTS, timeout_s=10)
    server.stop()

    shots = load.shots
    in_flight = [s for s in shots if s.sent < signalled_at < s.done]
    refusals = [s for s in shots if s.status == 503]
    lost = [s for s in shots if s.status in (LOST, CONNECT_ERROR)]
    assert not lost, f"{len(lost)} requests got no answer: {lost[:3]}"
    assert {s.status for s in shots} == {200, 503}
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
