"""Limits of the HTTP layer against slow and huge requests (service.http.limits), on a real
`tessera serve`: an oversized head is refused with 431, a head or body that does not arrive
gets 408 and the connection closes, idle connections are closed, and stalled uploads are
dropped at the body timeout without holding a slot of the work.

The limits here are short (0.5 s) so that the tests are quick; nothing asserts how quickly
the server reacts, only what it answers, with generous deadlines."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tessera.testing.bodies import NPY, npy, random_tiles
from tessera.testing.serve import local_server

LIMITS = {"TESSERA_MAX_HEADER_BYTES": "4096", "TESSERA_HEADER_TIMEOUT_S": "0.5", "TESSERA_BODY_TIMEOUT_S": "0.5",
          "TESSERA_KEEP_ALIVE_S": "0.5", "TESSERA_MAX_REQUESTS_IN_FLIGHT": "4"}
PATIENCE_S = 30.0  # how long a test waits for the server to act: far above the limits


@pytest.fixture(scope="module")
def timings(measurements):
    """How long after the stall the server acted, per case (saved by make reliability)."""
    cases: list[dict] = []
    yield cases
    measurements["http_limits"] = {"limit_s": float(LIMITS["TESSERA_HEADER_TIMEOUT_S"]),
                                   "max_header_bytes": int(LIMITS["TESSERA_MAX_HEADER_BYTES"]), "cases": cases}


def timed(timings: list, case: str, sock: socket.socket) -> bytes:
    started = time.monotonic()
    answer = read_all(sock)
    timings.append({"case": case, "answer": answer.split(b"\r\n", 1)[0].decode() if answer else "closed, no answer",
                    "after_s": round(time.monotonic() - started, 3)})
    return answer


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    proc = local_server(checkpoint_dir, tmp_path_factory.mktemp("http") / "server.log", **LIMITS)
    yield proc
    proc.stop()


def connect(server) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=PATIENCE_S)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_an_oversized_head_is_431_and_the_server_stays_well(server, timings):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(64):  # up to 4 MiB; the server refuses long before
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = timed(timings, "a header line of up to 4 MiB", sock)
    assert status_of(answer) == 431 and b"header_too_large" in answer
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_a_head_that_stops_half_way_is_408(server, timings):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-")
        answer = timed(timings, "a head that stops half-way", sock)
    assert status_of(answer) == 408 and b"request_timeout" in answer and b"head" in answer


def test_an_idle_new_connection_is_closed_without_an_answer(server, timings):
    with connect(server) as sock:
        assert timed(timings, "a connection that sends nothing", sock) == b""


def test_an_idle_keep_alive_connection_is_closed(server):
    with connect(server) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = read_all(sock)  # the answer, then the close when keep-alive runs out
    assert status_of(answer) == 200


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_a_body_that_does_not_arrive_is_408(server, framing, timings):
    head = b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
    head += b"Content-Length: 1000\r\n\r\n" if framing == "length" else b"Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n"
    with connect(server) as sock:
        sock.sendall(head + b"abc")
        answer = timed(timings, f"a body that stops after 3 bytes ({framing})", sock)
    assert status_of(answer) == 408 and b"body" in answer


def test_stalled_uploads_are_dropped_at_the_body_timeout_and_hold_no_slot(server):
    body = npy(random_tiles(1))
    stalled = []
    for _ in range(8):  # twice TESSERA_MAX_REQUESTS_IN_FLIGHT
        sock = connect(server)
        sock.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
                     b"Content-Length: %d\r\n\r\n%s" % (len(body), body[:3]))
        stalled.append(sock)
    try:  # they hold upload slots, not the work's: a well-behaved client gets through
        response = httpx.post(server.url + "/v1/encode", content=body, headers={"Content-Type": NPY}, timeout=PATIENCE_S)
        assert response.status_code == 200, response.text
        statuses = [status_of(read_all(sock)) for sock in stalled]
        assert statuses == [408] * len(stalled), statuses
    finally:
        for sock in stalled:
            sock.close()


@pytest.mark.parametrize("tiles", [1, 7, 8, 30, 100])
def test_bodies_of_any_size_are_not_counted_as_head(server, tiles):
    """A read that ends a request's head may carry most of its body (reads are up to 256 KiB)."""
    body = npy(random_tiles(tiles))
    with connect(server) as sock:
        sock.sendall(b"POST /v1/encode HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\nAccept: application/x-npy\r\n"
                     b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        assert status_of(read_all(sock)) == 200
