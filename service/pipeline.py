"""One pipeline per operation: read the body -> admit -> decode the body -> cache -> batch -> answer.

A request touches each layer once. It reads its body in an upload slot (``Lifecycle.upload``)
and takes its slot of the work (``Lifecycle.admit``) and its batcher ticket only once the body
has arrived, so a client that uploads slowly, or stops, holds neither. The ticket
(``Batcher.expect``) makes a batch waiting for company wait for the request while its body is
decoded, and is given back the moment the request will not submit (every tile a cache hit, or
an error). Encode hashes its tiles once:
the hashes are the cache keys and, for the misses, the keys the batcher computes equal tiles
once by. Without a cache nothing is hashed and the batcher keys rows by their bytes.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from model.refine import REFINE_LR, pack, unpack
from service import formats
from service.batcher import Batcher
from service.batching import Ticket
from service.cache import tile_hashes
from service.errors import BadRequest, DeadlineExceeded, InferenceFailed, Overloaded, TooLarge
from service.codecs import PNG, Layout
from service.formats import DECODE_READERS, DECODE_WRITERS, ENCODE_READERS, ENCODE_WRITERS, Decoded, Encoded, Reader
from service.offload import INLINE_TILES, in_pool, off_loop
from service.registry import ServedModel
from service.state import ServiceState

REFINE_RESERVE = 0.05  # of the request timeout: refinement stops that long before the deadline, to answer in


async def encode(request: Request, state: ServiceState, model: str | None, layout: Layout, refine: int = 0) -> Response:
    """``POST /v1/encode``: tiles (an image, a sheet laid out by ``layout``, npy or JSON) -> latents,
    refined for ``refine`` steps through the decoder when asked (``refine_tiles``)."""
    served = state.registry.get(model)
    read = formats.reader(request, ENCODE_READERS)
    write = formats.writer(request, ENCODE_WRITERS)
    with state.lifecycle.upload():
        body = await read_body(request, state.settings.max_body_bytes)
    with state.lifecycle.admit(uploaded=True):
        deadline = state.clock.now() + state.settings.request_timeout_s
        with served.encoder.expect() as ticket:  # a batch waiting for company waits for this request
            batch = await decode_body(read, body, state.settings.decode_timeout_s, state.limits, layout, served.channels)
            if refine:
                latents, cached, refined = await refine_tiles(state, served, batch.tiles, refine, deadline,
                                                              request.receive, ticket)
            else:
                (latents, cached), refined = await encode_tiles(state, served, batch.tiles, deadline, request.receive,
                                                                ticket), None
        return write(Encoded(served.name, served.latent_shape, latents, cached, batch, refined))


async def decode(request: Request, state: ServiceState, model: str | None, columns: int | None, layout: Layout,
                 decoder: str | None = None) -> Response:
    """``POST /v1/decode``: latents (npy or JSON) -> tiles (a PNG sheet laid out by ``layout``, npy
    or JSON), RGBA for RGBA models, by the model's ``decoder`` (its own when None)."""
    served = state.registry.get(model)
    batcher = served.decoder_for(decoder)
    read = formats.reader(request, DECODE_READERS)
    write = formats.writer(request, DECODE_WRITERS)
    with state.lifecycle.upload():
        body = await read_body(request, state.settings.max_body_bytes)
    with state.lifecycle.admit(uploaded=True):
        deadline = state.clock.now() + state.settings.request_timeout_s
        with batcher.expect() as ticket:
            latents, body_columns = await decode_body(
                read, body, state.settings.decode_timeout_s, served.latent_shape, state.limits.max_tiles, served.name
            )
            if write is DECODE_WRITERS[PNG]:
                formats.check_sheet(len(latents), columns or body_columns, layout, state.limits.max_pixels)
            tiles = await submit(batcher, latents, None, deadline, request.receive, ticket)
        return write(Decoded(served.name, tiles, columns or body_columns, layout))


# -- steps -----------------------------------------------------------------------------------------


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed ``max_bytes``."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            length = int(declared)
        except ValueError:
            raise BadRequest(f"Content-Length {declared!r} is not a number") from None
        if length > max_bytes:
            raise TooLarge(f"body of {length} bytes exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
    receive = request.receive
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"body exceeds the limit of {max_bytes} bytes; send fewer tiles per request")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def decode_body(reader: Reader, body: bytes, timeout_s: float, *args: Any) -> Any:
    """``reader.read(body, *args)``: on the event loop for small bodies, else in the decode threads
    within ``timeout_s`` (422 ``decode_timeout`` beyond)."""
    if reader.inline(body):
        return reader.read(body, *args)
    return await off_loop(lambda: reader.read(body, *args), timeout_s, "the body")


async def hashes(tiles: np.ndarray) -> list[bytes]:
    """The tiles' cache keys: on the event loop for a few tiles, else in the decode pool."""
    return tile_hashes(tiles) if len(tiles) <= INLINE_TILES else await in_pool(lambda: tile_hashes(tiles))


async def encode_tiles(
    state: ServiceState, served: ServedModel, tiles: np.ndarray, deadline: float, receive: Receive, ticket: Ticket,
    keys: list[bytes] | None = None,
) -> tuple[np.ndarray, int]:
    """Latents of uint8 ``tiles`` [N, 32, 32, channels of the model], from the cache where it has them, and how
    many tiles it had; ``keys``: the tiles' hashes, when the caller has them already."""
    cache = state.cache
    if cache is None:
        return finite(served, await submit(served.encoder, tiles, None, deadline, receive, ticket)), 0
    keys = keys if keys is not None else await hashes(tiles)
    found = await cache.get_many(served.key, keys)
    hits = {k: z for k, z in found.items() if z.shape == served.latent_shape} if found else found
    missing = [i for i, key in enumerate(keys) if key not in hits] if hits else None  # None: every tile
    if missing == []:
        ticket.give_back()
        state.events.tiles_from_cache(served.name, len(keys))
        return np.stack([hits[key] for key in keys]).astype(np.float32, copy=False), len(keys)
    rows, miss_keys = (tiles, keys) if missing is None else (tiles[missing], [keys[i] for i in missing])
    computed = finite(served, await submit(served.encoder, rows, miss_keys, deadline, receive, ticket))
    await cache.put_many(served.key, dict(zip(miss_keys, computed)))
    if missing is None:
        return computed, 0
    state.events.tiles_from_cache(served.name, len(keys) - len(missing))
    return merge(keys, hits, missing, computed), len(keys) - len(missing)


async def refine_tiles(
    state: ServiceState, served: ServedModel, tiles: np.ndarray, steps: int, deadline: float, receive: Receive,
    ticket: Ticket,
) -> tuple[np.ndarray, int, int]:
    """Latents of ``tiles`` refined for ``steps`` steps (``model.refine``), how many tiles the cache
    had, and the steps that ran: ``steps``, or fewer when the deadline (less a reserve to answer
    in) or a full queue came first; then the latents so far are the answer, and are not cached.
    Refined latents are cached under their own key (the model's, the steps and the step size);
    the encoder's latents they start from come from the plain cache where it has them."""
    cache = state.cache
    namespace = f"{served.key}/refine/{steps}/{REFINE_LR:g}"
    hits: dict[bytes, np.ndarray] = {}
    keys = missing = None
    rows = tiles
    if cache is not None:
        keys = await hashes(tiles)
        found = await cache.get_many(namespace, keys)
        hits = {k: z for k, z in found.items() if z.shape == served.latent_shape} if found else {}
        missing = [i for i, key in enumerate(keys) if key not in hits]
        if not missing:
            ticket.give_back()
            state.events.tiles_from_cache(served.name, len(keys), "refine")
            return np.stack([hits[key] for key in keys]).astype(np.float32, copy=False), len(keys), steps
        rows = tiles[missing]
    miss_keys = [keys[i] for i in missing] if missing is not None else None
    start, _ = await encode_tiles(state, served, rows, deadline, receive, ticket, miss_keys)
    stop_at = deadline - REFINE_RESERVE * state.settings.request_timeout_s
    packed = pack_rows(rows, start) if len(rows) <= INLINE_TILES else await in_pool(lambda: pack_rows(rows, start))
    done = 0
    for _ in range(steps):
        try:
            packed = await submit(served.refiner, packed, None, stop_at, receive, None)
        except (DeadlineExceeded, Overloaded):
            break
        done += 1
    refined = finite(served, unpack(torch.from_numpy(packed), served.channels, served.latent_shape)[1].numpy())
    state.events.tiles_refined(served.name, len(rows), steps, done)
    if missing is None:
        return refined, 0, done
    if done == steps:
        await cache.put_many(namespace, dict(zip(miss_keys, refined)))
    if not hits:
        return refined, 0, done
    state.events.tiles_from_cache(served.name, len(keys) - len(missing), "refine")
    return merge(keys, hits, missing, refined), len(keys) - len(missing), done


def pack_rows(tiles: np.ndarray, latents: np.ndarray) -> np.ndarray:
    """Refinement rows (``model.refine.pack``) of uint8 tiles [N, 32, 32, C] and their latents."""
    x = torch.from_numpy(np.ascontiguousarray(tiles.transpose(0, 3, 1, 2))).float().div_(255.0)
    return pack(x, torch.from_numpy(latents)).numpy()


def merge(keys: list[bytes], hits: dict[bytes, np.ndarray], missing: list[int], computed: np.ndarray) -> np.ndarray:
    """Latents in request order: ``computed`` at the rows ``missing``, cache hits elsewhere."""
    latents = np.empty((len(keys), *computed.shape[1:]), dtype=np.float32)
    latents[missing] = computed
    found = [i for i, key in enumerate(keys) if key in hits]
    latents[found] = np.stack([hits[keys[i]] for i in found])  # one copy, not one assignment per tile
    return latents


async def submit(
    batcher: Batcher, rows: np.ndarray, keys: Sequence[Hashable] | None, deadline: float, receive: Receive, ticket: Ticket
) -> np.ndarray:
    """``batcher.submit``, which watches for the client to leave (its tiles are then dropped)."""
    return await batcher.submit(rows, keys=keys, deadline=deadline, gone=lambda: _disconnected(receive), ticket=ticket)


async def _disconnected(receive: Receive) -> None:
    """Returns when the client disconnects (call only after the body was read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def finite(served: ServedModel, latents: np.ndarray) -> np.ndarray:
    if not np.isfinite(latents).all():
        raise InferenceFailed(f"model {served.name!r} produced non-finite latents; the checkpoint may be broken")
    return latents

