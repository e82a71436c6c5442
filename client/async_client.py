"""AsyncClient: the Tessera HTTP API as awaitable calls.

Everything travels as npy: tiles go up as uint8 [N, 32, 32, 3] and latents come back as
float32 [N, *latent_shape] (and the reverse for decode). Inputs larger than one request are
cut into chunks sized by the server's announced limits and sent a few at a time; 429/503
answers are retried after the server's Retry-After (or an exponential backoff).
"""

from __future__ import annotations

import asyncio
import email.utils
import io
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx
import numpy as np
from PIL import Image

from tessera.client import errors
from tessera.client.results import EncodeResult, Health, Limits, Models
from tessera.tiles import DECODERS, MAX_REFINE_STEPS
from tessera.client.tiles import ImageSource, assemble_sheet, cut_sheet, image_pixels, load_image, tiles_from_array, to_channels

logger = logging.getLogger(__name__)

NPY = "application/x-npy"
NPY_HEADER_BYTES = 256  # room for the npy header of one chunk's body
RETRY_STATUSES = (429, 503)
# the connection broke after it was made: safe to resend (encode and decode are pure functions)
RETRY_TRANSPORT = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

Progress = Callable[[int, int], Any]  # called with (tiles done, tiles in total) after each chunk
EncodeInput = ImageSource | np.ndarray | Sequence[ImageSource | np.ndarray]
DecodeInput = np.ndarray | EncodeResult


class AsyncClient:
    """Asynchronous client of one Tessera server.

    Args:
        base_url: where the server listens, e.g. "http://127.0.0.1:8000".
        api_key: sent when the server requires keys, as ``Authorization: Bearer <key>``.
        timeout: seconds to wait for any one request.
        retries: how many times a 429/503 answer or a broken connection is retried.
        concurrency: how many chunk requests may be in flight at once.
        backoff: first wait in seconds when the server gives no Retry-After; doubles each retry.
        max_wait: longest wait honoured for one retry; a longer Retry-After ends the retries.
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 4,
        concurrency: int = 4,
        backoff: float = 0.5,
        max_wait: float = 60.0,
    ) -> None:
        if retries < 0 or concurrency < 1:
            raise ValueError(f"retries must be >= 0 and concurrency >= 1, got retries={retries} concurrency={concurrency}")
        self.base_url = base_url.rstrip("/")
        self.retries = retries
        self.concurrency = concurrency
        self.backoff = backoff
        self.max_wait = max_wait
        headers = {"User-Agent": "tessera-client"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=headers, timeout=timeout)
        self._models: Models | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    # ---- plain calls ---------------------------------------------------------------------

    async def models(self) -> Models:
        """The models the server can run, its default and its per-request limits."""
        response = await self._request("GET", "/v1/models")
        self._models = Models.from_json(_json(response))
        return self._models

    async def health(self) -> Health:
        """Whether the server is alive and ready (model loaded and warmed); never retried."""
        live = await self._request("GET", "/healthz", retry=False, check=False)
        ready = await self._request("GET", "/readyz", retry=False, check=False)
        try:
            info = ready.json()
        except ValueError:
            info = {}
        return Health(live=live.status_code == 200, ready=ready.status_code == 200, info=info if isinstance(info, dict) else {})

    # ---- encode / decode -----------------------------------------------------------------

    async def encode(
        self,
        x: EncodeInput,
        model: str | None = None,
        *,
        crop: bool = False,
        refine: int = 0,
        progress: Progress | None = None,
    ) -> EncodeResult:
        """Encode tiles to latents.

        Args:
            x: a PIL image (one tile or a sheet whose sides are multiples of 32), a path to one,
                a uint8 array [N, 32, 32, 3|4], or a list of any of these.
            model: model name; the server's default when None.
            crop: drop a sheet's partial last row/column of tiles instead of refusing it.
            refine: encode effort, 0 to MAX_REFINE_STEPS: the server refines each latent for this
                many steps through the decoder, so it decodes closer to its tile (CPU per step:
                about one decoder pass and its gradient per tile).
            progress: called with (tiles done, total) after each chunk.

        Returns:
            EncodeResult with float32 latents [N, *latent_shape] in input order.
        """
        if isinstance(refine, bool) or not isinstance(refine, int) or not 0 <= refine <= MAX_REFINE_STEPS:
            raise errors.InputError(f"refine must be an integer from 0 to {MAX_REFINE_STEPS}, got {refine!r}")
        # reading and cutting images is CPU work: keep it off the event loop
        tiles, grids, counts = await asyncio.to_thread(_gather_tiles, x, crop=crop)
        info = await self._limits_and_default()
        model = model or info.default
        chunk = _chunk_size(info.limits, tiles[0].nbytes)

        params = {"model": model, **({"refine": refine} if refine else {})}

        async def send(part: np.ndarray) -> tuple[np.ndarray, int, str, int | None]:
            response = await self._request(
                "POST", "/v1/encode", params=params, content=_npy_bytes(part),
                headers={"Content-Type": NPY, "Accept": NPY},
            )
            latents = _npy_array(response, rows=len(part), dtype=np.float32)
            refined = response.headers.get("X-Tessera-Refined")
            return (latents, int(response.headers.get("X-Tessera-Cached", 0)), response.headers.get("X-Tessera-Model", model),
                    int(refined) if refined is not None else None)

        parts = await self._map_chunks(tiles, chunk, send, progress)
        return EncodeResult(
            latents=np.concatenate([p[0] for p in parts]),
            model=parts[0][2],
            grids=tuple(grids),
            counts=tuple(counts),
            cached=sum(p[1] for p in parts),
            refined=min(p[3] for p in parts) if refine else None,
        )

    async def decode(
        self,
        latents: DecodeInput,
        model: str | None = None,
        *,
        decoder: str = DECODERS[0],
        progress: Progress | None = None,
    ) -> np.ndarray:
        """Decode latents to tiles.

        Args:
            latents: float [N, *latent_shape], or an EncodeResult (its model is then the default).
            model: model name; the EncodeResult's model, else the server's default, when None.
            decoder: which of the model's decoders (``ModelInfo.decoders``): "faithful", its own,
                or "sharp", fine-tuned for crisp pixel-art-like tiles where the model has one.
            progress: called with (tiles done, total) after each chunk.

        Returns:
            uint8 [N, 32, 32, 3].
        """
        if decoder not in DECODERS:
            raise errors.InputError(f"decoder must be one of {list(DECODERS)}, got {decoder!r}")
        array, model = _latents_and_model(latents, model)
        info = await self._limits_and_default()
        model = model or info.default
        chunk = _chunk_size(info.limits, array[0].nbytes)
        params = {"model": model, **({"decoder": decoder} if decoder != DECODERS[0] else {})}

        async def send(part: np.ndarray) -> np.ndarray:
            response = await self._request(
                "POST", "/v1/decode", params=params, content=_npy_bytes(part),
                headers={"Content-Type": NPY, "Accept": NPY},
            )
            return _npy_array(response, rows=len(part), dtype=np.uint8)

        return np.concatenate(await self._map_chunks(array, chunk, send, progress))

    async def decode_sheet(
        self,
        latents: DecodeInput,
        columns: int | None = None,
        model: str | None = None,
        *,
        decoder: str = DECODERS[0],
        progress: Progress | None = None,
    ) -> Image.Image:
        """Decode latents to one sheet image, tiles row-major.

        Args:
            latents: float [N, *latent_shape], or an EncodeResult of one sheet (its grid is kept).
            columns: tiles per row; the EncodeResult's grid, else the server's rule (all in one
                row up to 16 tiles, else about square), when None.
            model: as for decode.
            decoder: as for decode.
            progress: as for decode.
        """
        if columns is None and isinstance(latents, EncodeResult) and latents.grid is not None:
            columns = latents.grid[1]
        tiles = await self.decode(latents, model, decoder=decoder, progress=progress)
        return Image.fromarray(assemble_sheet(tiles, columns))

    # ---- machinery -----------------------------------------------------------------------

    async def _limits_and_default(self) -> Models:
        return self._models if self._models is not None else await self.models()

    async def _map_chunks(
        self,
        items: np.ndarray,
        size: int,
        send: Callable[[np.ndarray], Awaitable[Any]],
        progress: Progress | None,
    ) -> list[Any]:
        """Run send() on consecutive chunks of items, at most `concurrency` at once, results in order."""
        total = len(items)
        gate = asyncio.Semaphore(self.concurrency)
        done = 0

        async def one(start: int) -> Any:
            nonlocal done
            async with gate:
                result = await send(items[start : start + size])
            done += min(size, total - start)
            if progress is not None:
                progress(done, total)
            return result

        starts = range(0, total, size)
        if len(starts) == 1:
            return [await one(0)]
        try:
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(one(start)) for start in starts]
        except BaseExceptionGroup as group_error:  # the first failure cancelled the others
            raise group_error.exceptions[0] from None
        return [task.result() for task in tasks]

    async def _request(
        self,
        method: str,
        path: str,
        *,
        retry: bool = True,
        check: bool = True,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send one request, retrying 429/503 and broken connections; raise typed errors."""
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = await self._http.request(method, path, **kwargs)
            except httpx.ConnectError as exc:
                raise errors.ConnectError(
                    f"cannot reach the Tessera server at {self.base_url} ({_reason(exc)}); is it running?"
                ) from None
            except httpx.TimeoutException as exc:
                raise errors.RequestTimeoutError(
                    f"the Tessera server at {self.base_url} did not answer {method} {path} in time "
                    f"({type(exc).__name__}); raise the client's timeout or send fewer tiles per call"
                ) from None
            except RETRY_TRANSPORT as exc:
                if last:
                    raise errors.ProtocolError(f"connection to {self.base_url} broke during {method} {path}: {_reason(exc)}") from None
                wait = self._backoff_wait(attempt)
                logger.info("connection broke during %s %s (%s); retrying in %.2fs", method, path, exc, wait)
                await asyncio.sleep(wait)
                continue
            if response.status_code in RETRY_STATUSES and not last:
                wait = _retry_after(response)
                wait = self._backoff_wait(attempt) if wait is None else wait
                if wait <= self.max_wait:
                    logger.info("%s %s answered %d; retrying in %.2fs", method, path, response.status_code, wait)
                    await asyncio.sleep(wait)
                    continue
            if check and response.status_code >= 400:
                raise errors.error_from_response(
                    response.status_code, _json_or_none(response),
                    fallback=f"{method} {path} failed with HTTP {response.status_code} {response.reason_phrase}",
                    retry_after=_retry_after(response),
                )
            return response
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _backoff_wait(self, attempt: int) -> float:
        ceiling = min(self.max_wait, self.backoff * 2**attempt)
        return ceiling * (0.5 + random.random() / 2)  # jitter keeps parallel chunks from retrying in step


# ---- helpers ----------------------------------------------------------------------------------


def _gather_tiles(x: EncodeInput, *, crop: bool) -> tuple[np.ndarray, list[tuple[int, int]], list[int]]:
    """All inputs as one uint8 [N, 32, 32, 3] (or 4 when any has alpha), the grid of each image,
    the tile count of each input."""
    items = list(x) if isinstance(x, (list, tuple)) else [x]
    if not items:
        raise errors.InputError("nothing to encode: the input list is empty")
    parts, grids, counts = [], [], []
    for item in items:
        if isinstance(item, np.ndarray):
            tiles = tiles_from_array(item)
        elif isinstance(item, (Image.Image, str)) or hasattr(item, "__fspath__"):
            name = "image" if isinstance(item, Image.Image) else str(item)
            tiles, grid = cut_sheet(image_pixels(load_image(item)), crop=crop, name=name)
            grids.append(grid)
        else:
            raise errors.InputError(
                f"cannot encode a {type(item).__name__}; pass a PIL image, a path, "
                f"a uint8 array [N, 32, 32, 3|4] or a list of these"
            )
        parts.append(tiles)
        counts.append(len(tiles))
    channels = max(part.shape[-1] for part in parts)
    return np.concatenate([to_channels(part, channels) for part in parts]), grids, counts


def _latents_and_model(latents: DecodeInput, model: str | None) -> tuple[np.ndarray, str | None]:
    if isinstance(latents, EncodeResult):
        model = model or latents.model
        latents = latents.latents
    array = np.asarray(latents, dtype=np.float32)
    if array.ndim < 2 or array.shape[0] == 0:
        raise errors.InputError(f"latents must be shaped [N, *latent_shape] with N >= 1, got {list(array.shape)}")
    if not np.isfinite(array).all():
        raise errors.InputError("latents contain NaN or infinite values")
    return np.ascontiguousarray(array), model


def _chunk_size(limits: Limits, item_bytes: int) -> int:
    """Most items per request that both the tile and the body limit allow."""
    by_bytes = (limits.max_body_bytes - NPY_HEADER_BYTES) // item_bytes
    return max(1, min(limits.max_tiles_per_request, by_bytes))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _npy_array(response: httpx.Response, *, rows: int, dtype: type) -> np.ndarray:
    """The npy body of a response, checked to hold `rows` items of `dtype`."""
    try:
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
    except (ValueError, OSError) as exc:
        kind = response.headers.get("Content-Type", "?")
        raise errors.ProtocolError(f"expected an npy body from {response.request.url.path}, got {kind} ({exc})") from None
    if array.shape[:1] != (rows,) or array.dtype != dtype:
        raise errors.ProtocolError(
            f"{response.request.url.path} answered {array.dtype} {list(array.shape)} for {rows} items; expected {np.dtype(dtype)}"
        )
    return array


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds the server asked us to wait (delta-seconds or an HTTP date), if it said."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise errors.ProtocolError(f"{response.request.url.path} did not answer JSON; is {response.request.url.host} a Tessera server?") from None


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _reason(exc: BaseException) -> str:
    """The most specific OS-level reason in an exception chain, e.g. "connection refused"."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno is not None:
            text = os.strerror(cause.errno) if cause.errno > 0 else (cause.strerror or str(cause))
            return text.lower()
        cause = cause.__cause__ or cause.__context__
    return str(exc).split("] ", 1)[-1] or type(exc).__name__  # "[Errno 111] Connection refused"
