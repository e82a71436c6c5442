"""The short way in for /v1/encode and /v1/decode (service.fastpath): taken by the common
request, and every request answered exactly as the standard way answers it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.apps import serving
from tests.support.bodies import NPY, npy, png, png_sheet, random_tiles

LATENTS = npy(np.random.default_rng(1).standard_normal((3, 64, 1, 1)).astype(np.float32))
TILES = npy(random_tiles(2, seed=4))
# (method, path, headers, body): answers of every kind, the errors included
REQUESTS = {
    "npy tiles": ("POST", "/v1/encode", {"Content-Type": NPY, "Accept": NPY}, TILES),
    "npy tiles, JSON answer": ("POST", "/v1/encode", {"Content-Type": NPY}, TILES),
    "sheet with margin and spacing": ("POST", "/v1/encode?margin=1&spacing=2", {"Content-Type": "image/png"},
                                      png(np.zeros((1 + 32 + 2 + 32, 1 + 32, 3), np.uint8))),
    "PNG sheet, model named": ("POST", "/v1/encode?model=tiny", {"Content-Type": "image/png"}, png_sheet(5, rows=2, cols=2)),
    "latents to a PNG sheet": ("POST", "/v1/decode?columns=2", {"Content-Type": NPY}, LATENTS),
    "latents to npy": ("POST", "/v1/decode", {"Content-Type": NPY, "Accept": NPY}, LATENTS),
    "undecodable npy": ("POST", "/v1/encode", {"Content-Type": NPY}, b"\x93NUMPY garbage"),
    "unknown model": ("POST", "/v1/encode?model=nope", {"Content-Type": NPY}, TILES),
    "unknown parameter": ("POST", "/v1/decode?modle=tiny", {"Content-Type": NPY}, LATENTS),
    "bad columns (FastAPI judges it)": ("POST", "/v1/decode?columns=abc", {"Content-Type": NPY}, LATENTS),
    "unsupported Content-Type": ("POST", "/v1/encode", {"Content-Type": "text/plain"}, b"hello"),
    "unsupported Content-Encoding": ("POST", "/v1/encode", {"Content-Type": NPY, "Content-Encoding": "gzip"}, TILES),
    "unacceptable Accept": ("POST", "/v1/decode", {"Content-Type": NPY, "Accept": "text/html"}, LATENTS),
    "wrong latent shape": ("POST", "/v1/decode", {"Content-Type": NPY}, npy(np.zeros((1, 16, 2, 2), np.float32))),
    "GET is not allowed": ("GET", "/v1/encode", {}, b""),
}


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    with serving(checkpoint_dir, cache_max_bytes=0) as client:  # no cache: both ways compute every answer
        yield client


class CountingStack:
    """Stands in for the app's middleware stack: counts the requests that took the standard way."""

    def __init__(self, app) -> None:
        self.app, self.calls = app, 0

    async def __call__(self, scope, receive, send) -> None:
        self.calls += scope["type"] == "http"
        await self.app(scope, receive, send)


def answer(client, name: str):
    method, path, headers, body = REQUESTS[name]
    r = client.request(method, path, headers=headers, content=body or None)
    return r.status_code, {k: v for k, v in r.headers.items() if k != "date"}, r.content


@pytest.mark.parametrize("name", REQUESTS)
def test_both_ways_give_the_same_answer(client, name):
    app = client.app
    short = answer(client, name)
    routes, app.short_routes = app.short_routes, {}
    try:
        standard = answer(client, name)
    finally:
        app.short_routes = routes
    assert short[0] == standard[0], (short, standard)
    assert short[1] == standard[1]
    assert short[2] == standard[2]


def test_the_common_request_skips_the_framework_and_is_counted(client):
    app = client.app
    client.get("/healthz")  # the middleware stack exists once a request went through it
    stack = app.middleware_stack = CountingStack(app.middleware_stack)
    try:
        for name in ("npy tiles", "latents to a PNG sheet", "sheet with margin and spacing", "unknown model"):
            answer(client, name)
        assert stack.calls == 0
        answer(client, "bad columns (FastAPI judges it)")
        answer(client, "GET is not allowed")
        assert stack.calls == 2
    finally:
        app.middleware_stack = stack.app
    answered = client.events.of("request_answered")[-6:]
    assert [(e["endpoint"], e["status"]) for e in answered] == [
        ("/v1/encode", 200), ("/v1/decode", 200), ("/v1/encode", 200), ("/v1/encode", 404), ("/v1/decode", 422),
        ("/v1/encode", 405),
    ]


def test_a_bug_on_the_short_way_is_a_500_with_a_request_id(client, monkeypatch, caplog):
    from service import pipeline

    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(pipeline, "encode", broken)
    status, headers, body = answer(client, "npy tiles")
    assert status == 500 and headers["connection"] == "close" and len(headers["x-request-id"]) == 16
    assert headers["x-request-id"] in body.decode() and "RuntimeError: a bug" in caplog.text
