"""The short way in for ``/v1/encode`` and ``/v1/decode``: ``TesseraApp``, a FastAPI app whose
ASGI entry hands the common request straight to its route's endpoint.

A request there passes, in order, the checks its route declares (API key, unknown query
parameters, the query values, the serving state) and gets the same answers and errors the
standard way gives: the app's own exception handlers build them, and the request is reported
to the event sink as the metrics middleware would. What it leaves out is the stack between the
server and the endpoint (Starlette's middleware, the router's matching, FastAPI's dependency
solving), which for a single-tile npy request cost more CPU than the rest of the service's own
work (``bench.cpu``). A request it does not judge goes the standard way, before its body is
read: a query value FastAPI validates (and words the 422 for), another method, an app mounted
under a ``root_path``.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope, Send

from service.dependencies import MAX_LAYOUT_PIXELS, MAX_REFINE_STEPS, check_query, get_state
from tiles import DECODERS
from service.errors import TesseraError, client_disconnect_response, internal_error_response, tessera_error_response


class Slow(Exception):
    """A query value the short way does not judge: FastAPI validates it (and words the 422)."""


def _model(value: str) -> str:
    if len(value) > 200:  # ModelName's max_length
        raise Slow
    return value


def _columns(value: str) -> int:
    if not (value.isascii() and value.isdigit() and 1 <= int(value) <= 4096):  # the route's ge=1, le=4096
        raise Slow
    return int(value)


def _pixels(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) <= MAX_LAYOUT_PIXELS):  # Margin's and Spacing's bounds
        raise Slow
    return int(value)


def _steps(value: str) -> int:
    if not (value.isascii() and value.isdigit() and int(value) <= MAX_REFINE_STEPS):  # Refine's bounds
        raise Slow
    return int(value)


def _decoder(value: str) -> str:
    if value not in DECODERS:  # Decoder's values
        raise Slow
    return value


PARSERS: dict[str, Callable[[str], Any]] = {"model": _model, "columns": _columns, "margin": _pixels, "spacing": _pixels,
                                            "refine": _steps, "decoder": _decoder}


@dataclass(frozen=True)
class ShortRoute:
    """A route served the short way: its endpoint ``(request, state, **query)`` and the query
    parameters it declares, each with the parser of its plain values."""

    path: str
    endpoint: Callable[..., Any]
    parsers: dict[str, Callable[[str], Any]]
    known: frozenset[str]  # the parsers' names: the parameters check_query accepts

    @classmethod
    def of(cls, route: APIRoute) -> ShortRoute:
        names = [param.alias for param in route.dependant.query_params]
        taken = list(inspect.signature(route.endpoint).parameters)[:2]
        if taken != ["request", "state"] or not set(names) <= set(PARSERS):
            raise TypeError(f"{route.path}: the short way needs an endpoint (request, state, **query) with query "
                            f"parameters among {sorted(PARSERS)}; got {taken} and {names}")
        return cls(route.path, route.endpoint, {name: PARSERS[name] for name in names}, frozenset(names))

    def query(self, request: Request) -> dict[str, Any]:
        """The query values, checked as the route's dependencies check them; ``Slow`` for a value
        FastAPI should judge."""
        if not request.scope["query_string"]:
            return {}
        check_query(request, self.known)
        params = request.query_params
        return {name: self.parsers[name](params[name]) for name in params} if params else {}


class TesseraApp(FastAPI):
    """FastAPI, with ``POST`` to the routes named by ``serve_short`` taken the short way."""

    short_routes: dict[str, ShortRoute] = {}  # replaced whole by serve_short, never changed in place

    def serve_short(self, router: APIRouter, *paths: str) -> None:
        """Take ``POST`` requests to ``paths``, routes of ``router`` (included in this app), the short way."""
        routes = {r.path: r for r in router.routes if isinstance(r, APIRoute) and "POST" in r.methods}
        missing = [p for p in paths if p not in routes]
        if missing:
            raise ValueError(f"no POST route {missing} to serve the short way")
        self.short_routes = {path: ShortRoute.of(routes[path]) for path in paths}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            route = self.short_routes.get(scope["path"])
            if route is not None and await self._short(route, scope, receive, send):
                return
        await super().__call__(scope, receive, send)

    async def _short(self, route: ShortRoute, scope: Scope, receive: Receive, send: Send) -> bool:
        """Serve one request; False, with nothing read or sent, when it must go the standard way."""
        start = time.perf_counter()
        scope["app"] = self
        request = Request(scope, receive)
        try:
            self.state.keys.check(request.headers.get("authorization"))
            query = route.query(request)
            response = await route.endpoint(request, await get_state(request), **query)
        except Slow:
            return False
        except TesseraError as exc:
            response = tessera_error_response(request, exc)
        except ClientDisconnect:
            response = client_disconnect_response()
        except Exception as exc:  # noqa: BLE001 - answered as ErrorGuard answers the standard way
            response = internal_error_response(scope, exc)
        try:
            await response(scope, receive, send)
        finally:
            self.state.events.request_answered(route.path, response.status_code, time.perf_counter() - start)
        return True
