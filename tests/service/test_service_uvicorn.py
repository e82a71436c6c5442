"""The service as users run it: `tessera serve` (uvicorn) in its own process, over a socket."""

from __future__ import annotations

import io
import signal
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tessera.testing.bodies import NPY, load_npy, npy, png, random_tiles, sheet_of
from tessera.testing.serve import local_server
from tessera.testing.waiting import wait_until

WINDOW_MS = 5000  # the slow server's batch window: requests wait in it while a test looks


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    process = local_server(checkpoint_dir, tmp_path_factory.mktemp("serve") / "server.log")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def slow_server(checkpoint_dir, tmp_path_factory):
    """Batches stay open 5 s, so requests can be caught waiting in them; no cache."""
    env = {"TESSERA_MAX_WAIT_MS": str(WINDOW_MS), "TESSERA_BATCH_CLOSE_EARLY": "false",  # requests wait in the window
           "TESSERA_CACHE_MAX_BYTES": "0", "TESSERA_SHUTDOWN_GRACE_S": "60"}
    process = local_server(checkpoint_dir, tmp_path_factory.mktemp("serve-slow") / "server.log", **env)
    yield process
    process.stop()


def test_sheet_round_trip_over_http(server):
    tiles = random_tiles(6, seed=1)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        r = http.post("/v1/encode", content=png(sheet_of(tiles, 2, 3)), headers={"Content-Type": "image/png", "Accept": NPY})
        assert r.status_code == 200 and r.headers["X-Tessera-Grid"] == "2,3", r.text
        latents = load_npy(r.content)
        r = http.post("/v1/decode?columns=3", content=npy(latents), headers={"Content-Type": NPY})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        sheet = np.asarray(Image.open(io.BytesIO(r.content)))
        assert sheet.shape == (64, 96, 3)
        r = http.post("/v1/decode", content=npy(latents), headers={"Content-Type": NPY, "Accept": NPY})
        np.testing.assert_array_equal(sheet, sheet_of(load_npy(r.content), 2, 3))
        assert http.get("/v1/models").json()["default"] == "tiny"
        assert server.metric("tessera_requests_total", endpoint="/v1/encode", status="2xx") >= 1


def test_error_over_http_is_json(server):
    r = httpx.post(server.url + "/v1/encode?model=missing", content=b"x", headers={"Content-Type": NPY})
    assert r.status_code == 404 and r.json()["code"] == "unknown_model"


def raw_request(port: int, body: bytes, length: int | None = None, expect_continue: bool = False) -> socket.socket:
    """A POST /v1/encode on a raw socket; with ``expect_continue`` the body is sent only once the
    server answered 100 Continue, i.e. once the app reads it."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST /v1/encode HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {NPY}\r\n"
        f"Content-Length: {len(body) if length is None else length}\r\n"
        + ("Expect: 100-continue\r\n" if expect_continue else "") + "\r\n"
    ).encode()
    sock.sendall(head)
    if expect_continue:
        answer = sock.recv(64)
        assert answer.startswith(b"HTTP/1.1 100"), answer
    sock.sendall(body)
    return sock


def test_a_client_leaving_mid_body_is_not_a_server_error(server):
    answered = server.metric("tessera_requests_total", endpoint="/v1/encode", status="4xx")
    sock = raw_request(server.port, b"\x93NUMPY" + b"x" * 100, length=100_000, expect_continue=True)
    sock.close()  # the app is reading the body
    wait_until(lambda: server.metric("tessera_requests_total", endpoint="/v1/encode", status="4xx") > answered,
               what="the cut-off request is answered (499, nobody reads it)")
    assert server.metric("tessera_requests_total", endpoint="/v1/encode", status="5xx") == 0
    assert "Traceback" not in server.log.read_text()


def test_the_server_says_once_that_it_is_ready_and_where(server):
    ready = [line for line in server.log.read_text().splitlines() if "ready on http://" in line]
    assert len(ready) == 1 and f"127.0.0.1:{server.port}: 1 models (tiny, default tiny)" in ready[0], ready


def test_a_disconnected_clients_tiles_are_not_computed(slow_server):
    labels = {"model": "tiny", "op": "encode"}
    sock = raw_request(slow_server.port, npy(random_tiles(3, seed=2)))
    wait_until(lambda: slow_server.metric("tessera_queue_depth_tiles", **labels) == 3, what="the request waits in the open batch")
    sock.close()
    wait_until(lambda: slow_server.metric("tessera_rejected_tiles_total", reason="disconnected", **labels) == 3,
               what="the disconnected request's tiles are dropped")
    r = httpx.post(slow_server.url + "/v1/encode", content=npy(random_tiles(1, seed=3)), headers={"Content-Type": NPY}, timeout=60)
    assert r.status_code == 200
    assert slow_server.metric("tessera_batch_size_tiles_sum", **labels) == 1  # only the last request's tile was computed


def test_sigterm_finishes_admitted_requests(slow_server):
    """Runs last on the slow server: it shuts the server down."""
    labels = {"model": "tiny", "op": "encode"}

    def post(i):
        return httpx.post(slow_server.url + "/v1/encode", content=npy(random_tiles(1, seed=10 + i)),
                          headers={"Content-Type": NPY}, timeout=60)

    with ThreadPoolExecutor(4) as pool:
        pending = [pool.submit(post, i) for i in range(4)]
        wait_until(lambda: slow_server.metric("tessera_queue_depth_tiles", **labels) == 4, what="four requests wait in the open batch")
        slow_server.process.send_signal(signal.SIGTERM)
        wait_until(lambda: httpx.get(slow_server.url + "/readyz", timeout=10).status_code == 503, what="/readyz says draining")
        refused = post(99)  # the port stays open while draining: new work is refused politely
        assert refused.status_code == 503 and refused.json()["code"] == "shutting_down", refused.text
        assert refused.headers["Retry-After"] and refused.headers["Connection"] == "close"
        responses = [f.result(timeout=120) for f in pending]
    assert [r.status_code for r in responses] == [200] * 4
    assert all(r.json()["count"] == 1 for r in responses)
    assert slow_server.process.wait(timeout=120) == 0  # a clean drain is a clean exit
    log = slow_server.log.read_text()
    assert "Application shutdown complete" in log and "unfinished" not in log
