"""Retries and error mapping against a small real HTTP server that answers from a script.

The scripted server listens on a real socket, so the client's whole stack (httpx, its
connection pool, timing of the waits) runs exactly as against Tessera.
"""

from __future__ import annotations

import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from tessera.client import Client, errors

MODELS = {
    "default": "tiny",
    "models": [{"name": "tiny", "default": True, "arch": "dcae", "spec": "dcae-t48", "params": 1000,
                "latent_shape": [64, 1, 1], "compression_ratio": 48.0, "weights_sha256": "0" * 64, "metrics": {}}],
    "limits": {"max_tiles_per_request": 64, "max_body_bytes": 1 << 20, "max_batch_tiles": 64},
}


def _json(status: int, body: dict, **headers: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode()


def _latents(count: int) -> tuple[int, dict[str, str], bytes]:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((count, 64, 1, 1), dtype=np.float32))
    return 200, {"Content-Type": "application/x-npy", "X-Tessera-Model": "tiny", "X-Tessera-Cached": "0"}, buffer.getvalue()


class ScriptedServer:
    """Answers each path from a list of (status, headers, body), in order; the last one repeats."""

    def __init__(self, script: dict[str, list[tuple[int, dict[str, str], bytes]]]) -> None:
        self.script = {path: list(answers) for path, answers in script.items()}
        self.hits: dict[str, list[float]] = {path: [] for path in script}
        lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                path = self.path.split("?", 1)[0]
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                with lock:
                    outer.hits.setdefault(path, []).append(time.monotonic())
                    answers = outer.script.get(path) or [_json(404, {"detail": f"no {path}", "code": "not_found"})]
                    status, headers, body = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


TILES = np.zeros((3, 32, 32, 3), dtype=np.uint8)


def test_503_is_retried_after_retry_after_seconds():
    busy = _json(503, {"detail": "queue full; retry later", "code": "overloaded"}, **{"Retry-After": "1"})
    with ScriptedServer({"/v1/models": [busy, _json(200, MODELS)], "/v1/encode": [_latents(3)]}) as server:
        with Client(server.url, retries=2) as client:
            result = client.encode(TILES)
    first, second = server.hits["/v1/models"]
    assert second - first >= 0.95  # waited as long as Retry-After asked
    assert result.latents.shape == (3, 64, 1, 1) and result.model == "tiny"


def test_429_without_retry_after_backs_off_and_succeeds():
    slow_down = _json(429, {"detail": "too many requests", "code": "rate_limited"})
    with ScriptedServer({"/v1/models": [_json(200, MODELS)], "/v1/encode": [slow_down, slow_down, _latents(3)]}) as server:
        with Client(server.url, retries=3, backoff=0.05) as client:
            result = client.encode(TILES)
    assert len(server.hits["/v1/encode"]) == 3
    assert result.latents.shape[0] == 3


def test_overload_that_outlasts_the_retries_raises_with_the_servers_detail():
    busy = _json(503, {"detail": "queue full (64 tiles waiting); retry later", "code": "overloaded"}, **{"Retry-After": "0"})
    with ScriptedServer({"/v1/models": [busy]}) as server:
        with Client(server.url, retries=2) as client, pytest.raises(errors.OverloadedError) as caught:
            client.models()
    assert str(caught.value) == "queue full (64 tiles waiting); retry later"
    assert caught.value.status == 503 and caught.value.code == "overloaded"
    assert len(server.hits["/v1/models"]) == 3  # one try and two retries


def test_retry_after_longer_than_max_wait_is_not_waited_out():
    busy = _json(503, {"detail": "draining for shutdown", "code": "shutting_down"}, **{"Retry-After": "3600"})
    with ScriptedServer({"/v1/models": [busy]}) as server:
        with Client(server.url, retries=3, max_wait=5) as client, pytest.raises(errors.ShuttingDownError) as caught:
            client.models()  # a wait of an hour would hang the test: it raises at once instead
    assert len(server.hits["/v1/models"]) == 1 and caught.value.retry_after == 3600


@pytest.mark.parametrize(
    ("code", "cls"),
    [("overloaded", errors.OverloadedError), ("shutting_down", errors.ShuttingDownError),
     ("not_ready", errors.NotReadyError), ("inference_failed", errors.InferenceFailedError),
     ("something_new", errors.UnavailableError)],
)
def test_503s_are_told_apart_by_the_servers_code(code, cls):
    answer = _json(503, {"detail": f"explanation of {code}", "code": code}, **{"Retry-After": "0"})
    with ScriptedServer({"/v1/models": [answer]}) as server:
        with Client(server.url, retries=1) as client, pytest.raises(errors.UnavailableError) as caught:
            client.models()
    assert type(caught.value) is cls and caught.value.code == code and caught.value.status == 503
    assert str(caught.value) == f"explanation of {code}" and caught.value.retry_after == 0


def test_the_code_decides_where_the_status_alone_would_not():
    cases = [(404, "unknown_model", errors.NotFoundError), (415, "unsupported_encoding", errors.UnsupportedMediaError),
             (422, "bad_shape", errors.UnprocessableError), (500, "internal_error", errors.ServerError),
             (504, "deadline_exceeded", errors.DeadlineExceededError), (406, "not_acceptable", errors.APIError)]
    for status, code, cls in cases:
        error = errors.error_from_response(status, {"detail": "why", "code": code}, fallback="?")
        assert type(error) is cls and (error.status, error.code, error.detail) == (status, code, "why")
    assert isinstance(errors.error_from_response(429, None, fallback="slow down"), errors.OverloadedError)


@pytest.mark.parametrize(
    ("status", "cls"),
    [(400, errors.BadRequestError), (401, errors.AuthenticationError), (404, errors.NotFoundError),
     (413, errors.PayloadTooLargeError), (415, errors.UnsupportedMediaError), (422, errors.UnprocessableError),
     (504, errors.DeadlineExceededError), (500, errors.ServerError)],
)
def test_error_statuses_raise_typed_errors_carrying_the_detail(status, cls):
    answer = _json(status, {"detail": f"explanation of {status}", "code": "some_code"})
    with ScriptedServer({"/v1/models": [_json(200, MODELS)], "/v1/encode": [answer]}) as server:
        with Client(server.url) as client, pytest.raises(cls) as caught:
            client.encode(TILES)
    assert str(caught.value) == f"explanation of {status}" and caught.value.status == status
    assert len(server.hits["/v1/encode"]) == 1  # errors other than 429/503 are never retried


def test_a_server_that_is_not_tessera_gives_a_protocol_error():
    with ScriptedServer({"/v1/models": [(200, {"Content-Type": "text/html"}, b"<html>hello</html>")]}) as server:
        with Client(server.url) as client, pytest.raises(errors.ProtocolError, match="Tessera server"):
            client.models()
