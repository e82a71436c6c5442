"""Slow uploads cannot lock anyone out (service.runtime.lifecycle's upload pool, service.http.limits'
minimum body rate), on a real `tessera serve`:

- a request takes a slot of the work only once its body has arrived: with twice as many stalled
  uploads as there are slots, an encode is answered at once, while the stalled ones still wait;
- a body that trickles in below the minimum rate is dropped with 408 after its grace period;
- under a slowloris attack (256 connections that each send a head and 3 bytes of their body,
  reopened as they are dropped) a normal client sending one tile a second is served within 5 s
  at least 95% of the time (the measurement: make reliability).
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import httpx
import pytest

from tessera.testing.bodies import NPY, npy, random_tiles
from tessera.testing.measuring import measuring
from tessera.testing.serve import local_server

PATIENCE_S = 30.0
SLOTS = 4
ATTACKERS = 256
ATTACK_S = 40.0
NORMAL_TIMEOUT_S = 5.0
SERVED_AT_LEAST = 0.95


def stalled_upload(port: int, body: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=PATIENCE_S)
    sock.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                 b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:3]))
    return sock


def answered(sock: socket.socket) -> bytes:
    """What the server has sent on ``sock`` so far, without waiting."""
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


@pytest.fixture(scope="module")
def patient_server(checkpoint_dir, tmp_path_factory):
    """Bodies may take 30 s at any rate: stalled uploads stay open for the whole test."""
    env = {"TESSERA_MAX_REQUESTS_IN_FLIGHT": str(SLOTS), "TESSERA_BODY_TIMEOUT_S": "30", "TESSERA_MIN_BODY_BYTES_PER_S": "0"}
    proc = local_server(checkpoint_dir, tmp_path_factory.mktemp("uploads") / "server.log", **env)
    yield proc
    proc.stop()


def test_stalled_uploads_never_hold_the_slots_of_the_work(patient_server):
    body = npy(random_tiles(1))
    stalled = [stalled_upload(patient_server.port, body) for _ in range(2 * SLOTS)]
    try:
        response = httpx.post(patient_server.url + "/v1/encode", content=body, headers={"Content-Type": NPY},
                              timeout=PATIENCE_S)
        assert response.status_code == 200, response.text
        assert [answered(sock) for sock in stalled] == [b""] * len(stalled)  # still uploading, not refused
    finally:
        for sock in stalled:
            sock.close()


def test_a_body_below_the_minimum_rate_is_408_after_its_grace(checkpoint_dir, tmp_path):
    env = {"TESSERA_BODY_TIMEOUT_S": "60", "TESSERA_BODY_GRACE_S": "0.3", "TESSERA_MIN_BODY_BYTES_PER_S": "1024"}
    with local_server(checkpoint_dir, tmp_path / "server.log", **env) as server:
        with stalled_upload(server.port, npy(random_tiles(1))) as sock:
            answer = b""
            while chunk := sock.recv(65536):  # well before the 60 s body timeout
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"bytes/s, under the minimum of 1024" in answer, answer[:300]
        fine = httpx.post(server.url + "/v1/encode", content=npy(random_tiles(30)), headers={"Content-Type": NPY})
        assert fine.status_code == 200  # a body sent at once is not affected


async def _attack(port: int, stop: threading.Event, body: bytes, counts: dict) -> None:
    """``ATTACKERS`` connections holding a stalled upload each, reopened as the server drops them."""

    async def one() -> None:
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:3]))
                await writer.drain()
                counts["opened"] += 1
                while not stop.is_set():
                    try:
                        if not await asyncio.wait_for(reader.read(65536), 0.5):
                            break  # dropped: reconnect
                    except TimeoutError:
                        continue
                writer.close()
            except OSError:
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one() for _ in range(ATTACKERS)))


def test_a_normal_client_is_served_through_a_slowloris_attack(checkpoint_dir, tmp_path, measurements):
    body = npy(random_tiles(1))
    with local_server(checkpoint_dir, tmp_path / "server.log") as server:  # the default limits
        stop, counts = threading.Event(), {"opened": 0}
        attacker = threading.Thread(target=lambda: asyncio.run(_attack(server.port, stop, body, counts)), daemon=True)
        attacker.start()
        try:
            time.sleep(2.0)  # the attack is in place
            outcomes = []
            duration = ATTACK_S if measuring() else 8.0
            end = time.monotonic() + duration
            with httpx.Client(timeout=NORMAL_TIMEOUT_S) as client:
                while time.monotonic() < end:
                    started = time.monotonic()
                    try:
                        status = client.post(server.url + "/v1/encode", content=body, headers={"Content-Type": NPY}).status_code
                    except httpx.TimeoutException:
                        status = "timeout"
                    outcomes.append(status)
                    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
        finally:
            stop.set()
            attacker.join(30)
        served = outcomes.count(200) / len(outcomes)
        measurements["slowloris"] = {"attackers": ATTACKERS, "seconds": duration, "requests": len(outcomes),
                                     "served_within_5s": served, "attack_connections_opened": counts["opened"],
                                     "outcomes": {str(k): outcomes.count(k) for k in set(outcomes)}}
        assert counts["opened"] >= ATTACKERS  # the attack was on
        assert set(outcomes) <= {200, "timeout", 503}, outcomes
        if measuring():
            assert served >= SERVED_AT_LEAST, outcomes
        else:
            assert outcomes.count(200) >= 1, outcomes  # not locked out (the share is make reliability's)
