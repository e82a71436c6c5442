"""FastAPI dependencies of the routes: the serving state, the API key and the query check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
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


def known_query(*names: str):
    """A dependency refusing query parameters other than ``names`` (422): a typo like ``?modle=``
    would otherwise silently fall back to a default."""
    known = frozenset(names)

    async def check(request: Request) -> None:
        params = request.query_params
        if params and not known.issuperset(params):
            unknown = sorted(set(params) - known)
            raise InvalidInput(
                f"unknown query parameter(s) {unknown}; this endpoint takes {sorted(known)}",
                code="unknown_parameter",
            )

    return Depends(check)


State = Annotated[ServiceState, Depends(get_state)]
KEY = [Depends(require_key)]
ModelName = Annotated[str | None, Query(description="model name (GET /v1/models); omitted: the default model", max_length=200)]
