"""Client: the blocking face of AsyncClient.

It owns one AsyncClient living on a private event loop in a daemon thread; each method here runs
the AsyncClient coroutine of the same name there and waits for it. The methods are written out,
so that editors and type checkers see them, and a test checks that their signatures are
AsyncClient's, so the two cannot drift apart. The private loop also makes the blocking client
usable where an event loop is already running, such as a notebook.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from tessera.client.async_client import AsyncClient, DecodeInput, EncodeInput, Progress
from tessera.client.results import EncodeResult, Health, Models

T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="tessera-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:  # Ctrl-C in the caller: stop the work on the loop too
            future.cancel()
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class Client:
    """Blocking client of one Tessera server; takes the same arguments as AsyncClient, and its
    methods are AsyncClient's (see there for their arguments). Use it as a context manager or
    call close() when done.

        with Client("http://127.0.0.1:8000") as client:
            result = client.encode("main.png")
            sheet = client.decode_sheet(result)
    """

    def __init__(self, base_url: str = "http://127.0.0.1:8000", api_key: str | None = None, **options: Any) -> None:
        self._loop = _LoopThread()
        try:
            self._async = self._run(_make_async(base_url, api_key, options))
        except BaseException:
            self._loop.stop()
            raise
        self._closed = False

    @property
    def base_url(self) -> str:
        return self._async.base_url

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run(coro)

    # the AsyncClient coroutines, blocking (tests/client/test_client_sync.py checks that the signatures match)

    def models(self) -> Models:
        """The models the server can run, its default and its per-request limits."""
        return self._run(self._async.models())

    def health(self) -> Health:
        """Whether the server is alive and ready (model loaded and warmed); never retried."""
        return self._run(self._async.health())

    def encode(self, x: EncodeInput, model: str | None = None, *, crop: bool = False, refine: int = 0,
               progress: Progress | None = None) -> EncodeResult:
        """Encode tiles to latents (``AsyncClient.encode``)."""
        return self._run(self._async.encode(x, model, crop=crop, refine=refine, progress=progress))

    def decode(self, latents: DecodeInput, model: str | None = None, *, decoder: str = "faithful",
               progress: Progress | None = None) -> np.ndarray:
        """Decode latents to uint8 tiles [N, 32, 32, 3] (``AsyncClient.decode``)."""
        return self._run(self._async.decode(latents, model, decoder=decoder, progress=progress))

    def decode_sheet(self, latents: DecodeInput, columns: int | None = None, model: str | None = None, *,
                     decoder: str = "faithful", progress: Progress | None = None) -> Image.Image:
        """Decode latents to one sheet image, tiles row-major (``AsyncClient.decode_sheet``)."""
        return self._run(self._async.decode_sheet(latents, columns, model, decoder=decoder, progress=progress))

    def close(self) -> None:
        """Close the connections and stop the private event loop."""
        if not self._closed:
            self._closed = True
            self._run(self._async.aclose())
            self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


async def _make_async(base_url: str, api_key: str | None, options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(base_url, api_key, **options)  # built on the loop that will use it
