"""Client: the blocking face of AsyncClient.

It owns one AsyncClient living on a private event loop in a daemon thread, and every public
coroutine method of AsyncClient becomes a blocking method here (generated, not copied), so the
two can never drift apart. The private loop also makes the blocking client usable where an
event loop is already running, such as a notebook.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from client.async_client import AsyncClient

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


def _blocking(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(self: Client, *args: Any, **kwargs: Any) -> Any:
        return self._run(getattr(self._async, name)(*args, **kwargs))

    return call


def _mirror_coroutines(source: type) -> Callable[[type], type]:
    """Class decorator: give the class a blocking twin of each public coroutine method of source."""

    def decorate(cls: type) -> type:
        for name, method in inspect.getmembers(source, inspect.iscoroutinefunction):
            if not name.startswith("_") and name != "aclose" and name not in vars(cls):
                setattr(cls, name, _blocking(name, method))
        return cls

    return decorate


@_mirror_coroutines(AsyncClient)
class Client:
    """Blocking client of one Tessera server; takes the same arguments as AsyncClient.

    Methods: encode, decode, decode_sheet, models, health (see AsyncClient for their
    arguments), close. Use it as a context manager or call close() when done.

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
