"""FastAPI dependencies of the routes other than encode and decode (whose front door,
``tessera.service.http.front_door``, checks the key and the query itself): the serving state and
the API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from tessera.service.runtime.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    """The app's state while it serves (503 before and after)."""
    return request.app.state.tessera.serving()


_bearer = HTTPBearer(auto_error=False, description="one of TESSERA_API_KEYS, when the server sets them")


async def require_key(request: Request, _: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """401 unless the request carries a known API key (a no-op without TESSERA_API_KEYS)."""
    request.app.state.tessera.keys.check(request.headers.get("authorization"))


State = Annotated[ServiceState, Depends(get_state)]
KEY = [Depends(require_key)]
