"""The front door (service.http.front_door): POST /v1/encode and /v1/decode go straight to the
shared ``answer``, every request is answered exactly as through FastAPI's routes, and the app
refuses to start with a route dependency or a middleware the front door would skip."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi import Depends
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response

from tessera.service.http import front_door
from tessera.service.http import routes as routes_module
from tessera.service.http.app import create_app
from tessera.service.http.front_door import ENCODE
from tessera.testing.apps import serving, settings_for
from tessera.testing.bodies import NPY, npy, png, png_sheet, random_tiles
from tessera.testing.docs import generated_table, page

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
    "bad columns": ("POST", "/v1/decode?columns=abc", {"Content-Type": NPY}, LATENTS),
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
    """Stands in for the app's middleware stack: counts the requests that went through FastAPI."""

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
    direct = answer(client, name)
    app.served = {}  # every request through FastAPI's routes
    try:
        routed = answer(client, name)
    finally:
        del app.served
    assert direct[0] == routed[0], (direct, routed)
    assert direct[1] == routed[1]
    assert direct[2] == routed[2]


def test_encode_and_decode_skip_the_framework_and_every_request_is_counted_once(client):
    app = client.app
    client.get("/healthz")  # the middleware stack exists once a request went through it
    stack = app.middleware_stack = CountingStack(app.middleware_stack)
    try:
        for name in ("npy tiles", "latents to a PNG sheet", "sheet with margin and spacing", "unknown model", "bad columns"):
            answer(client, name)
        assert stack.calls == 0
        answer(client, "GET is not allowed")
        assert stack.calls == 1
    finally:
        app.middleware_stack = stack.app
    answered = client.events.of("request_answered")[-6:]
    assert [(e["endpoint"], e["status"]) for e in answered] == [
        ("/v1/encode", 200), ("/v1/decode", 200), ("/v1/encode", 200), ("/v1/encode", 404), ("/v1/decode", 422),
        ("/v1/encode", 405),
    ]


def test_a_bug_behind_the_front_door_is_a_500_with_a_request_id(client, monkeypatch, caplog):
    async def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    endpoint = front_door.ENDPOINTS_SERVED[ENCODE]
    monkeypatch.setitem(front_door.ENDPOINTS_SERVED, ENCODE, dataclasses.replace(endpoint, run=broken))
    status, headers, body = answer(client, "npy tiles")
    assert status == 500 and headers["connection"] == "close" and len(headers["x-request-id"]) == 16
    assert headers["x-request-id"] in body.decode() and "RuntimeError: a bug" in caplog.text


def replace_route(monkeypatch, path: str, **changes) -> None:
    """Rebuild the POST ``path`` route of service.http.routes with ``changes``, as editing its
    decorator would."""
    routes = routes_module.router.routes
    index, route = next((i, r) for i, r in enumerate(routes) if isinstance(r, APIRoute) and r.path == path)
    options = {"endpoint": route.endpoint, "methods": ["POST"], "dependencies": route.dependencies, **changes}
    monkeypatch.setattr(routes_module.router, "routes", [*routes[:index], APIRoute(path, **options), *routes[index + 1:]])


def rate_limit() -> None:
    """A dependency someone might add to the encode route."""


def test_a_dependency_on_an_encode_route_stops_the_app_from_starting(checkpoint_dir, monkeypatch):
    replace_route(monkeypatch, ENCODE, dependencies=[Depends(rate_limit)])
    app = create_app(settings_for(checkpoint_dir))
    with pytest.raises(TypeError, match=r"POST /v1/encode declares \['rate_limit'\]"):
        with TestClient(app):
            pass


def test_a_query_parameter_on_a_decode_route_stops_the_app_from_starting(checkpoint_dir, monkeypatch):
    async def decode(request: Request, scale: int = 1):  # a parameter the front door does not parse
        return Response()

    replace_route(monkeypatch, "/v1/decode", endpoint=decode)
    app = create_app(settings_for(checkpoint_dir))
    with pytest.raises(TypeError, match=r"POST /v1/decode declares \['scale'\]"):
        with TestClient(app):
            pass


def test_the_routes_as_they_are_start(checkpoint_dir):
    create_app(settings_for(checkpoint_dir)).check()


def test_a_middleware_the_front_door_does_not_know_stops_the_app_from_starting(checkpoint_dir):
    app = create_app(settings_for(checkpoint_dir))
    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    with pytest.raises(TypeError, match="CORSMiddleware"):
        with TestClient(app):
            pass


def test_the_query_parameter_table_in_the_docs_is_made_from_the_params():
    """docs/api.md shows each query parameter's values, default and meaning as its Param declares
    them (``markdown_table``), and its endpoint table names the same parameters."""
    api = page("api.md")
    assert generated_table(api, "query parameter") == front_door.markdown_table(), \
        "rerun: python -m tessera.service.http.front_door (and paste its table)"
    endpoints = api[api.index("## Endpoints"):api.index("### Query parameters")]
    for path, endpoint in front_door.ENDPOINTS_SERVED.items():
        row = next(line for line in endpoints.splitlines() if line.startswith(f"| `POST {path}` |"))
        assert row.split(" | ")[1] == ", ".join(f"`{p.name}`" for p in endpoint.params), row
