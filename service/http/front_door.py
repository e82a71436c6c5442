"""The front door: the one way a request comes in. ``FrontDoor`` is the app's ASGI entry.

``POST /v1/encode`` and ``/v1/decode`` are parsed once, by their ``Endpoint`` (the API key, the
query's names and values), into a typed call (``EncodeCall``, ``DecodeCall``) that the pipeline
runs (``tessera.service.pipeline.operations``); the answer, or the error (``tessera.service.http.answers``), is
sent from here. Their FastAPI routes (``tessera.service.http.routes``) are the declared contract: the
OpenAPI document takes their query parameters from the same ``Param`` declarations, and the route
functions call the same ``answer``. The front door takes the request straight there, without
Starlette's middleware, the router and FastAPI's dependency solving (``bench.cpu``: that stack
cost more CPU than the rest of the service's own work for a one-tile request); anything else
(other paths and methods, an app mounted under a ``root_path``) goes through FastAPI.

Every HTTP request is reported to the event sink here, once, whichever way it went.

So that the two ways cannot drift, ``check`` (run when the app starts serving) refuses an
encode or decode route with a dependency or a parameter of its own, and a middleware the front
door does not know: either would apply to requests through FastAPI only.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from tessera.service.errors import BadRequest, InvalidInput, TooLarge
from tessera.service.http.answers import ErrorGuard, error_answer
from tessera.service.pipeline import operations
from tessera.service.pipeline.codecs import Layout
from tessera.service.pipeline.formats import Answer
from tessera.service.pipeline.operations import DecodeCall, EncodeCall
from tessera.service.runtime.metrics import ENDPOINTS
from tessera.service.runtime.state import ServiceState
from tessera.tiles import DECODERS, MAX_REFINE_STEPS

ENCODE, DECODE = "/v1/encode", "/v1/decode"
MAX_LAYOUT_PIXELS = 1024
KNOWN_MIDDLEWARE = (ErrorGuard,)  # answers what escaped a handler; the front door answers its own errors


@dataclass(frozen=True)
class Param:
    """A query parameter: its name, its values (a whole number within bounds, a name from
    ``choices``, or any text up to ``max_length``), its default and its description. Parsing and
    the OpenAPI document both come from here."""

    name: str
    description: str
    default: Any = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    max_length: int | None = None

    def parse(self, raw: str) -> Any:
        if self.minimum is not None:
            if not (raw.isascii() and raw.isdigit() and self.minimum <= int(raw) <= self.maximum):
                self._refuse(raw, f"a whole number from {self.minimum} to {self.maximum}")
            return int(raw)
        if self.choices and raw not in self.choices:
            self._refuse(raw, f"one of {list(self.choices)}")
        if self.max_length is not None and len(raw) > self.max_length:
            self._refuse(raw[:20] + "...", f"at most {self.max_length} characters")
        return raw

    def _refuse(self, raw: str, wanted: str) -> None:
        raise InvalidInput(f"invalid request: query parameter {self.name}={raw!r}: expected {wanted}; see /docs for "
                           f"the expected parameters", code="invalid_request")

    def values(self) -> str:
        """The values it takes, as docs/api.md's table shows them."""
        if self.minimum is not None:
            return f"{self.minimum} to {self.maximum}"
        if self.choices:
            return ", ".join(f"`{c}`" for c in self.choices)
        return f"text, at most {self.max_length} characters"

    def openapi(self) -> dict[str, Any]:
        if self.minimum is not None:
            schema: dict[str, Any] = {"type": "integer", "minimum": self.minimum, "maximum": self.maximum}
        elif self.choices:
            schema = {"type": "string", "enum": list(self.choices)}
        else:
            schema = {"type": "string", **({"maxLength": self.max_length} if self.max_length else {})}
        if self.default is not None:
            schema["default"] = self.default
        return {"name": self.name, "in": "query", "required": False, "description": self.description, "schema": schema}


MODEL = Param("model", "model name (GET /v1/models); omitted: the default model", max_length=200)
MARGIN = Param("margin", "pixels before the first tile of a sheet (Tiled's margin)", 0, 0, MAX_LAYOUT_PIXELS)
SPACING = Param("spacing", "pixels between the tiles of a sheet (Tiled's spacing)", 0, 0, MAX_LAYOUT_PIXELS)
COLUMNS = Param("columns", "sheet width in tiles; default N if N <= 16 else ceil(sqrt(N))", None, 1, 4096)
REFINE = Param(
    "refine",
    "encode effort: refine each tile's latent for this many steps through the frozen decoder (Adam on the tile's "
    "squared error), so the same decoder gives a closer tile back; 0: the encoder's latents. Costs about one decoder "
    "pass and its gradient per tile and step; stops early, answering what it has, when the request's deadline nears "
    "(X-Tessera-Refined says how many steps ran). Refined latents are cached under their own key",
    0, 0, MAX_REFINE_STEPS)
DECODER = Param(
    "decoder",
    "which of the model's decoders turns the latents into tiles (GET /v1/models lists each model's): faithful, its "
    "own, trained for fidelity; sharp, fine-tuned from it for crisp, pixel-art-like tiles at some cost in PSNR. The "
    "latents, the encoder and the cache are the same for both",
    "faithful", choices=DECODERS)


def _encode_call(q: dict[str, Any]) -> EncodeCall:
    return EncodeCall(q["model"], Layout(q["margin"], q["spacing"]), q["refine"])


def _decode_call(q: dict[str, Any]) -> DecodeCall:
    return DecodeCall(q["model"], q["columns"], Layout(q["margin"], q["spacing"]), q["decoder"])


@dataclass(frozen=True)
class Endpoint:
    """An endpoint the front door serves: its query parameters, how their values (the defaults
    for those not given) make a call, and the operation that runs the call."""

    path: str
    params: tuple[Param, ...]
    call: Callable[[dict[str, Any]], Any]
    run: Callable[[ServiceState, Any, operations.Upload], Awaitable[Answer]]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {p.name: p for p in self.params})
        object.__setattr__(self, "_defaults", {p.name: p.default for p in self.params})

    def parse(self, query_string: bytes) -> Any:
        """The call a query string asks for: 422 ``unknown_parameter`` for a name the endpoint does
        not take (a typo like ``?modle=`` would otherwise fall back to a default), 422
        ``invalid_request`` for a value out of bounds. A repeated name: its last value."""
        values = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)) if query_string else {}
        by_name = self._by_name
        unknown = [name for name in values if name not in by_name]
        if unknown:
            raise InvalidInput(f"unknown query parameter(s) {sorted(unknown)}; this endpoint takes {sorted(by_name)}",
                               code="unknown_parameter")
        return self.call({**self._defaults, **{name: by_name[name].parse(raw) for name, raw in values.items()}})

    def openapi(self) -> list[dict[str, Any]]:
        return [param.openapi() for param in self.params]


ENDPOINTS_SERVED = {
    ENCODE: Endpoint(ENCODE, (MODEL, MARGIN, SPACING, REFINE), _encode_call, operations.encode),
    DECODE: Endpoint(DECODE, (MODEL, COLUMNS, MARGIN, SPACING, DECODER), _decode_call, operations.decode),
}


class AsgiUpload:
    """``operations.Upload`` over ASGI: the headers the pipeline reads, the body as it arrives,
    and the client's leaving."""

    __slots__ = ("receive", "content_type", "content_encoding", "accept", "content_length")

    def __init__(self, scope: Scope, receive: Receive) -> None:
        self.receive = receive
        self.content_type = self.content_encoding = self.accept = self.content_length = None
        for name, value in scope["headers"]:
            if name == b"content-type":
                self.content_type = value.decode("latin-1")
            elif name == b"accept":
                self.accept = value.decode("latin-1")
            elif name == b"content-length":
                self.content_length = value.decode("latin-1")
            elif name == b"content-encoding":
                self.content_encoding = value.decode("latin-1")

    async def body(self, max_bytes: int) -> bytes:
        declared = self.content_length
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise BadRequest(f"Content-Length {declared!r} is not a number") from None
            if length > max_bytes:
                raise TooLarge(f"body of {length} bytes exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
        receive = self.receive
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"body exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def gone(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass


def _header(scope: Scope, wanted: bytes) -> str | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value.decode("latin-1")
    return None


async def answer(endpoint: Endpoint, app: FastAPI, scope: Scope, receive: Receive) -> Response:
    """The answer to one request to ``endpoint``: key check, parse, the pipeline, or the error's
    answer. The front door and the FastAPI route both answer through here."""
    try:
        state: ServiceState = app.state.tessera
        state.keys.check(_header(scope, b"authorization"))
        call = endpoint.parse(scope["query_string"])
        done = await endpoint.run(state.serving(), call, AsgiUpload(scope, receive))
        return Response(done.body, media_type=done.media_type, headers=done.headers)
    except Exception as exc:  # noqa: BLE001 - every error is answered (service.http.answers)
        return error_answer(scope, exc)


class FrontDoor(FastAPI):
    """FastAPI, with every request coming in through ``__call__``: ``POST`` to an endpoint of
    ``ENDPOINTS_SERVED`` goes straight to ``answer``, the rest through FastAPI; each is reported
    to the app's event sink once."""

    served: dict[str, Endpoint] = ENDPOINTS_SERVED  # the endpoints taken straight to ``answer``

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        start = time.perf_counter()
        path = scope["path"]
        endpoint = self.served.get(path) if scope["method"] == "POST" and not scope.get("root_path") else None
        if endpoint is not None:
            scope["app"] = self
            response = await answer(endpoint, self, scope, receive)
            try:
                await response(scope, receive, send)
            finally:
                self.state.tessera.events.request_answered(path, response.status_code, time.perf_counter() - start)
            return
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await super().__call__(scope, receive, send_and_record)
        finally:
            self.state.tessera.events.request_answered(path if path in ENDPOINTS else "other", status, time.perf_counter() - start)

    def check(self) -> None:
        """``TypeError`` when a route of ``ENDPOINTS_SERVED`` declares a dependency or parameter, or
        the app has a middleware, that the front door would skip."""
        for route in iter_route_contexts(self.router.routes):  # included routers' routes, as they serve
            if not (isinstance(route.original_route, APIRoute) and route.path in ENDPOINTS_SERVED
                    and "POST" in route.methods):
                continue
            dependant = route.dependant  # the route's own and its routers' dependencies
            extra = [*dependant.dependencies, *dependant.query_params, *dependant.header_params,
                     *dependant.cookie_params, *dependant.body_params, *dependant.path_params]
            if extra:
                names = [e.name or getattr(e.call, "__name__", repr(e.call)) if hasattr(e, "call") else e.name
                         for e in extra]
                raise TypeError(f"POST {route.path} declares {names}, which the front door (service.http.front_door) "
                                f"would skip; parse it in its Endpoint (the key check, the query) instead")
        unknown = [m.cls.__name__ for m in self.user_middleware if not _known(m)]
        if unknown:
            raise TypeError(f"middleware {unknown} would not see POST {sorted(ENDPOINTS_SERVED)}, which the front door "
                            f"(service.http.front_door) serves; teach the front door what it does first")


def markdown_table() -> str:
    """The query parameters of the endpoints the front door serves, as docs/api.md shows them
    (a test keeps the page equal to it): ``python -m tessera.service.http.front_door``."""
    rows = ["| Endpoint | Parameter | Values | Default | Meaning |", "|---|---|---|---|---|"]
    for endpoint in ENDPOINTS_SERVED.values():
        for param in endpoint.params:
            default = "unset" if param.default is None else f"`{param.default}`"
            rows.append(f"| `POST {endpoint.path}` | `{param.name}` | {param.values()} | {default} | {param.description} |")
    return "\n".join(rows)


def _known(middleware: Middleware) -> bool:
    return middleware.cls in KNOWN_MIDDLEWARE


if __name__ == "__main__":
    print(markdown_table())
