"""One pipeline per operation: read the body -> admit -> decode the body -> cache -> batch -> answer.

A request touches each layer once. It reads its body in an upload slot (``Lifecycle.upload``)
and takes its slot of the work (``Lifecycle.admit``) and its batcher ticket only once the body
has arrived, so a client that uploads slowly, or stops, holds neither. The ticket
(``Batcher.expect``) makes a batch waiting for company wait for the request while its body is
decoded, and is given back the moment the request will not submit (every tile a cache hit, or
an error). Encode hashes its tiles once:
the hashes are the cache keys and, for the misses, the keys the batcher computes equal tiles
once by. Without a cache nothing is hashed and the batcher keys rows by their bytes.

The operations know no web framework: a request reaches them as a parsed call (``EncodeCall``,
``DecodeCall``, built by the front door, ``tessera.service.http.front_door``) and an ``Upload``; they
return an ``Answer`` (``tessera.service.pipeline.formats``) for the HTTP layer to send.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tessera.model.refine import REFINE_LR, pack, unpack
from tessera.service.pipeline import formats
from tessera.service.batching.batcher import Batcher
from tessera.service.batching.queue import Ticket
from tessera.service.pipeline.cache import tile_hashes
from tessera.service.errors import DeadlineExceeded, InferenceFailed, Overloaded
from tessera.service.pipeline.codecs import PNG, Layout
from tessera.service.pipeline.formats import (DECODE_READERS, DECODE_WRITERS, ENCODE_READERS, ENCODE_WRITERS, Answer, Decoded,
                                      Encoded, Reader)
from tessera.service.pipeline.offload import INLINE_TILES, in_pool, off_loop
from tessera.service.batching.registry import ServedModel
from tessera.service.runtime.state import ServiceState

REFINE_RESERVE = 0.05  # of the request timeout: refinement stops that long before the deadline, to answer in

Gone = Callable[[], Awaitable[None]]  # returns when the client has left (call only after its body was read)


class Upload(Protocol):
    """What an operation needs of its request, whatever the web framework: the headers that say
    how to read the body and how to answer, the body, and a way to notice the client leaving."""

    content_type: str | None
    content_encoding: str | None
    accept: str | None

    async def body(self, max_bytes: int) -> bytes:
        """The body; ``TooLarge`` as soon as it is known to exceed ``max_bytes``."""

    async def gone(self) -> None:
        """Returns when the client disconnects."""


@dataclass(frozen=True)
class EncodeCall:
    """``POST /v1/encode``, its query parsed (defaults: the front door's ``Param`` declarations): the
    model (None: the default), the sheet's layout and the refinement steps asked for."""

    model: str | None
    layout: Layout
    refine: int


@dataclass(frozen=True)
class DecodeCall:
    """``POST /v1/decode``, its query parsed: the model, the sheet's width in tiles (None: from the
    body or the default), its layout and which of the model's decoders."""

    model: str | None
    columns: int | None
    layout: Layout
    decoder: str | None


async def encode(state: ServiceState, call: EncodeCall, upload: Upload) -> Answer:
    """Tiles (an image, a sheet laid out by the call's layout, npy or JSON) -> latents, refined for
    ``call.refine`` steps through the decoder when asked (``refine_tiles``)."""
    served = state.registry.get(call.model)
    read, write, body = await arrive(state, upload, ENCODE_READERS, ENCODE_WRITERS)
    with state.lifecycle.admit(uploaded=True):
        deadline = state.clock.now() + state.settings.request_timeout_s
        with served.encoder.expect() as ticket:  # a batch waiting for company waits for this request
            batch = await decode_body(read, body, state.settings.decode_timeout_s, state.limits, call.layout, served.channels)
            if call.refine:
                latents, cached, refined = await refine_tiles(state, served, batch.tiles, call.refine, deadline,
                                                              upload.gone, ticket)
            else:
                (latents, cached), refined = await encode_tiles(state, served, batch.tiles, deadline, upload.gone,
                                                                ticket), None
        return write(Encoded(served.name, served.latent_shape, latents, cached, batch, refined))


async def decode(state: ServiceState, call: DecodeCall, upload: Upload) -> Answer:
    """Latents (npy or JSON) -> tiles (a PNG sheet laid out by the call's layout, npy or JSON), RGBA
    for RGBA models, by the model's ``call.decoder`` (its own when None)."""
    served = state.registry.get(call.model)
    batcher = served.decoder_for(call.decoder)
    read, write, body = await arrive(state, upload, DECODE_READERS, DECODE_WRITERS)
    with state.lifecycle.admit(uploaded=True):
        deadline = state.clock.now() + state.settings.request_timeout_s
        with batcher.expect() as ticket:
            latents, body_columns = await decode_body(
                read, body, state.settings.decode_timeout_s, served.latent_shape, state.limits.max_tiles, served.name
            )
            columns = call.columns or body_columns
            if write is DECODE_WRITERS[PNG]:
                formats.check_sheet(len(latents), columns, call.layout, state.limits.max_pixels)
            tiles = await submit(batcher, latents, None, deadline, upload.gone, ticket)
        return write(Decoded(served.name, tiles, columns, call.layout))


# -- steps -----------------------------------------------------------------------------------------


async def arrive(state: ServiceState, upload: Upload, readers: dict[str, Reader],
                 writers: dict[str, Callable[..., Answer]]) -> tuple[Reader, Callable[..., Answer], bytes]:
    """The body's reader and the answer's writer (415 and 406 before a byte is read), then the
    body, read in an upload slot."""
    read = formats.reader(upload.content_type, upload.content_encoding, readers)
    write = formats.writer(upload.accept, writers)
    with state.lifecycle.upload():
        body = await upload.body(state.settings.max_body_bytes)
    return read, write, body


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
    state: ServiceState, served: ServedModel, tiles: np.ndarray, deadline: float, gone: Gone, ticket: Ticket,
    keys: list[bytes] | None = None,
) -> tuple[np.ndarray, int]:
    """Latents of uint8 ``tiles`` [N, 32, 32, channels of the model], from the cache where it has them, and how
    many tiles it had; ``keys``: the tiles' hashes, when the caller has them already."""
    cache = state.cache
    if cache is None:
        return finite(served, await submit(served.encoder, tiles, None, deadline, gone, ticket)), 0
    keys = keys if keys is not None else await hashes(tiles)
    found = await cache.get_many(served.key, keys)
    hits = {k: z for k, z in found.items() if z.shape == served.latent_shape} if found else found
    missing = [i for i, key in enumerate(keys) if key not in hits] if hits else None  # None: every tile
    if missing == []:
        ticket.give_back()
        state.events.tiles_from_cache(served.name, len(keys))
        return np.stack([hits[key] for key in keys]).astype(np.float32, copy=False), len(keys)
    rows, miss_keys = (tiles, keys) if missing is None else (tiles[missing], [keys[i] for i in missing])
    computed = finite(served, await submit(served.encoder, rows, miss_keys, deadline, gone, ticket))
    await cache.put_many(served.key, dict(zip(miss_keys, computed)))
    if missing is None:
        return computed, 0
    state.events.tiles_from_cache(served.name, len(keys) - len(missing))
    return merge(keys, hits, missing, computed), len(keys) - len(missing)


async def refine_tiles(
    state: ServiceState, served: ServedModel, tiles: np.ndarray, steps: int, deadline: float, gone: Gone,
    ticket: Ticket,
) -> tuple[np.ndarray, int, int]:
    """Latents of ``tiles`` refined for ``steps`` steps (``tessera.model.refine``), how many tiles the cache
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
    start, _ = await encode_tiles(state, served, rows, deadline, gone, ticket, miss_keys)
    stop_at = deadline - REFINE_RESERVE * state.settings.request_timeout_s
    packed = pack_rows(rows, start) if len(rows) <= INLINE_TILES else await in_pool(lambda: pack_rows(rows, start))
    done = 0
    for _ in range(steps):
        try:
            packed = await submit(served.refiner, packed, None, stop_at, gone, None)
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
    """Refinement rows (``tessera.model.refine.pack``) of uint8 tiles [N, 32, 32, C] and their latents."""
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
    batcher: Batcher, rows: np.ndarray, keys: Sequence[Hashable] | None, deadline: float, gone: Gone, ticket: Ticket
) -> np.ndarray:
    """``batcher.submit``, which watches for the client to leave (its tiles are then dropped)."""
    return await batcher.submit(rows, keys=keys, deadline=deadline, gone=gone, ticket=ticket)


def finite(served: ServedModel, latents: np.ndarray) -> np.ndarray:
    if not np.isfinite(latents).all():
        raise InferenceFailed(f"model {served.name!r} produced non-finite latents; the checkpoint may be broken")
    return latents

