"""FastAPI dependencies of the routes: the serving state, the API key and the query check; and
``PipelineRoute``, which runs the same checks for the common request without FastAPI's
dependency solving."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, Query, Request
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import InvalidInput, NotReady
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    state = request.app.state.tessera
    if state is None:
        raise NotReady("the service is starting; retry in a moment", retry_after_s=1)
    return state


_bearer = HTTPBearer(auto_error=False, description="one of TESSERA_API_KEYS, when the server sets them")


async def require_key(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries a known API key (a no-op without TESSERA_API_KEYS)."""
    request.app.state.keys.check(request.headers.get("authorization"))


def check_query(request: Request, known: frozenset[str]) -> None:
    """422 for query parameters other than ``known``: a typo like ``?modle=`` would otherwise
    silently fall back to a default."""
    params = request.query_params
    if params and not known.issuperset(params):
        unknown = sorted(set(params) - known)
        raise InvalidInput(f"unknown query parameter(s) {unknown}; this endpoint takes {sorted(known)}", code="unknown_parameter")


def known_query(*names: str):
    """A dependency: ``check_query`` with ``names``."""
    known = frozenset(names)

    async def check(request: Request) -> None:
        check_query(request, known)

    return Depends(check)


State = Annotated[ServiceState, Depends(get_state)]
KEY = [Depends(require_key)]
ModelName = Annotated[str | None, Query(description="model name (GET /v1/models); omitted: the default model", max_length=200)]
MAX_LAYOUT_PIXELS = 1024
Margin = Annotated[int, Query(ge=0, le=MAX_LAYOUT_PIXELS, description="pixels before the first tile of a sheet (Tiled's margin)")]
Spacing = Annotated[int, Query(ge=0, le=MAX_LAYOUT_PIXELS, description="pixels between the tiles of a sheet (Tiled's spacing)")]


# -- the pipeline's routes -------------------------------------------------------------------------


class Slow(Exception):
    """A query value the fast path does not judge: FastAPI validates it (and words the 422)."""


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


FAST_QUERY: dict[str, Callable[[str], Any]] = {"model": _model, "columns": _columns, "margin": _pixels, "spacing": _pixels}


class PipelineRoute(APIRoute):
    """A route of ``/v1/encode`` and ``/v1/decode``: declared, documented (OpenAPI) and, for an
    unusual request, served exactly as FastAPI does; the common request (known query
    parameters with plain values) runs the route's checks here, in their order (API key,
    unknown parameters, serving state), and skips FastAPI's dependency solving, which cost
    about as much CPU as the rest of a cached encode. The endpoint takes
    ``(request, state, **query)``."""

    def get_route_handler(self) -> Callable:
        standard = super().get_route_handler()
        endpoint = self.endpoint
        known = frozenset(param.alias for param in self.dependant.query_params)
        parsers = {name: FAST_QUERY[name] for name in known}

        async def handler(request: Request) -> Any:
            request.app.state.keys.check(request.headers.get("authorization"))
            check_query(request, known)
            params = request.query_params
            try:
                values = {name: parsers[name](params[name]) for name in params} if params else {}
            except Slow:
                return await standard(request)
            return await endpoint(request, await get_state(request), **values)

        return handler
