"""Access control and limits on a real ``tessera serve``, over raw sockets where it matters:
keys from a file, one header (``Authorization: Bearer``), health open, metrics by setting; a
declared body over the limit answered 413 before a byte of it is read, a streamed one cut off
as soon as it passes the limit."""

from __future__ import annotations

import socket
import time

import httpx
import pytest

from tessera.service.http.auth import KeyCheck
from tessera.service.errors import Unauthorized
from tessera.testing.bodies import NPY, npy, random_tiles
from tessera.testing.measuring import measuring
from tessera.testing.serve import local_server

KEYS = ("key-one-5f0c", "key-two-9a41", "key-three-77d2")
MAX_BODY = 64 * 1024


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("access")
    keys = folder / "keys"
    keys.write_text("# Tessera API keys, one per line\n" + "\n".join(KEYS) + "\n")
    process = local_server(checkpoint_dir, folder / "server.log", TESSERA_API_KEYS=f"@{keys}",
                            TESSERA_MAX_BODY_BYTES=str(MAX_BODY), TESSERA_METRICS_PUBLIC="false")
    yield process
    process.stop()


def raw(port: int, head: str, body: bytes = b"", read_s: float = 60.0) -> tuple[int, bytes, float]:
    """Send ``head`` (and ``body``) on a fresh connection; (status, response bytes, seconds to answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as sock:
        started = time.monotonic()
        sock.sendall(head.encode() + body)
        data = b""
        while b"\r\n\r\n" not in data or len(data) < _expected_length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return int(data.split(b" ", 2)[1]), data, time.monotonic() - started


def _expected_length(data: bytes) -> int:
    """Head plus Content-Length of a response whose head has arrived."""
    head, _, _ = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


def test_only_bearer_keys_from_the_file_open_v1(server):
    body = npy(random_tiles(1))
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for key in KEYS:
            ok = http.post("/v1/encode", content=body, headers={"Content-Type": NPY, "Authorization": f"Bearer {key}"})
            assert ok.status_code == 200, ok.text
        for headers in ({}, {"X-API-Key": KEYS[0]}, {"Authorization": KEYS[0]}, {"Authorization": f"Basic {KEYS[0]}"},
                        {"Authorization": f"Bearer {KEYS[0]}x"}, {"Authorization": "Bearer # Tessera API keys, one per line"}):
            r = http.post("/v1/encode", content=body, headers={"Content-Type": NPY, **headers})
            assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer", (headers, r.text)
            assert "Authorization: Bearer" in r.json()["detail"]
        assert http.get("/healthz").status_code == 200 and http.get("/readyz").status_code == 200
        assert http.get("/metrics").status_code == 401
        assert http.get("/metrics", headers={"Authorization": f"Bearer {KEYS[2]}"}).status_code == 200


def test_declared_body_over_the_limit_is_413_before_it_is_sent(server):
    auth = f"Authorization: Bearer {KEYS[0]}\r\n"
    head = f"POST /v1/encode HTTP/1.1\r\nHost: t\r\nContent-Type: {NPY}\r\n{auth}Content-Length: 1000000000\r\n\r\n"
    status, data, seconds = raw(server.port, head)  # not a byte of the body is sent: an answer at all proves it
    assert status == 413 and b"too_large" in data, data
    if measuring():
        assert seconds < 1.0
    status, data, _ = raw(server.port, head.replace(auth, ""))  # no key: 401 comes first, the body unread
    assert status == 401, data


def test_streamed_body_is_cut_off_at_the_limit(server):
    head = (f"POST /v1/encode HTTP/1.1\r\nHost: t\r\nContent-Type: {NPY}\r\nAuthorization: Bearer {KEYS[1]}\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % 16384 + b"\0" * 16384 + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(head.encode())
        sock.settimeout(0.05)
        answer = b""
        while sent <= MAX_BODY + 2 * 16384 and not answer:  # just past the limit, and no further
            sock.sendall(chunk)
            sent += 16384
            try:
                answer = sock.recv(65536)
            except TimeoutError:
                pass
        sock.settimeout(60)
        answer = answer or sock.recv(65536)  # refused without the rest of the stream
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]


def test_key_check_compares_every_key_in_constant_time(monkeypatch):
    import hmac

    calls = []

    def counting(a, b):
        calls.append((len(a), len(b)))
        return hmac_compare(a, b)

    hmac_compare = hmac.compare_digest
    monkeypatch.setattr("tessera.service.http.auth.hmac.compare_digest", counting)
    check = KeyCheck(KEYS)
    for presented, known in ((KEYS[0], True), (KEYS[2], True), ("short", False), ("x" * 1000, False)):
        calls.clear()
        if known:
            check.check(f"Bearer {presented}")
        else:
            with pytest.raises(Unauthorized):
                check.check(f"Bearer {presented}")
        assert len(calls) == len(KEYS) and set(calls) == {(32, 32)}  # digests: same length whatever the key
