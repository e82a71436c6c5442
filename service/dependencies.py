"""FastAPI dependencies of the routes: the serving state, the API key and the query check
(``service.fastpath`` runs the same checks for the common encode and decode request)."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import InvalidInput, NotReady
from service.state import ServiceState
from tiles import DECODERS, MAX_REFINE_STEPS


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
Refine = Annotated[int, Query(
    ge=0, le=MAX_REFINE_STEPS,
    description="encode effort: refine each tile's latent for this many steps through the frozen decoder (Adam on "
    "the tile's squared error), so the same decoder gives a closer tile back; 0: the encoder's latents. Costs about "
    "one decoder pass and its gradient per tile and step; stops early, answering what it has, when the request's "
    "deadline nears (X-Tessera-Refined says how many steps ran). Refined latents are cached under their own key")]
Decoder = Annotated[Literal[DECODERS], Query(
    description="which of the model's decoders turns the latents into tiles (GET /v1/models lists each model's): "
    "faithful, its own, trained for fidelity; sharp, fine-tuned from it for crisp, pixel-art-like tiles at some cost "
    "in PSNR. The latents, the encoder and the cache are the same for both")]
