"""Python client of the Tessera service: 32x32 game tiles <-> latents over HTTP.

    from tessera.client import Client

    with Client("http://127.0.0.1:8000") as tessera:
        result = tessera.encode("floor.png")          # EncodeResult: latents [N, 64, 1, 1], grid (rows, cols)
        tiles = tessera.decode(result.latents)        # uint8 [N, 32, 32, 3]
        sheet = tessera.decode_sheet(result)          # PIL image in the original grid

``AsyncClient`` offers the same methods as coroutines. Errors are in ``tessera.client.errors``.
"""

from tessera.client.async_client import AsyncClient
from tessera.client.errors import (
    APIError,
    AuthenticationError,
    ConnectError,
    InferenceFailedError,
    InputError,
    NotFoundError,
    NotReadyError,
    OverloadedError,
    ShuttingDownError,
    TesseraError,
    TransportError,
    UnavailableError,
)
from tessera.client.results import EncodeResult, Health, Limits, ModelInfo, Models
from tessera.client.sync_client import Client

__all__ = [
    "APIError",
    "AsyncClient",
    "AuthenticationError",
    "Client",
    "ConnectError",
    "EncodeResult",
    "Health",
    "InferenceFailedError",
    "InputError",
    "Limits",
    "ModelInfo",
    "Models",
    "NotFoundError",
    "NotReadyError",
    "OverloadedError",
    "ShuttingDownError",
    "TesseraError",
    "TransportError",
    "UnavailableError",
]
