"""Tessera: 32x32 game tiles <-> compact DC-AE latents, over HTTP.

Everything installs under this one name:

    from tessera import Client, AsyncClient   # the Python client (tessera.client): httpx, numpy, Pillow
    from tessera import tiles                 # the tile format: cutting sheets, assembling them, alpha
    from tessera import model                 # the networks and checkpoints (pip install 'tessera[serve]' or [train])
    import tessera.service                    # the service (tessera[serve])
    import tessera.training                   # the training package (tessera[train])

The base install is the client and the tile format only; ``Client`` and ``AsyncClient`` are
imported on first use, so ``import tessera`` pulls in nothing else.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("tessera")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"

__all__ = ["AsyncClient", "Client", "__version__"]


def __getattr__(name: str):
    if name in ("Client", "AsyncClient"):
        from tessera import client

        return getattr(client, name)
    raise AttributeError(f"module 'tessera' has no attribute {name!r}")
