"""FastAPI dependencies of the routes: the serving state, the API key and the query check
(``tessera.service.http.front_door`` runs the same checks for the common encode and decode request)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tessera.service.errors import NotReady
from tessera.service.runtime.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    state = request.app.state.tessera
    if state is None:
        raise NotReady("the service is starting; retry in a moment", retry_after_s=1)
    return state


_bearer = HTTPBearer(auto_error=False, description="one of TESSERA_API_KEYS, when the server sets them")


async def require_key(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries a known API key (a no-op without TESSERA_API_KEYS)."""
    request.app.state.keys.check(request.headers.get("authorization"))


State = Annotated[ServiceState, Depends(get_state)]
KEY = [Depends(require_key)]
