"""From checked arrays to results: the latent cache in front of the encode batcher.

Encode looks every distinct tile up in the cache (one ``get_many`` per request), sends only
the misses to the batcher, stores what was computed (one ``put_many``) and reassembles the
latents in request order. Without a cache every tile goes to the batcher, which computes
identical tiles once anyway.
"""

from __future__ import annotations

from collections.abc import Awaitable
from dataclasses import dataclass

import numpy as np

from service.batching import Ticket
from service.cache import LatentCache, tile_hashes
from service.errors import InferenceFailed
from service.metrics import Metrics
from service.offload import INLINE_TILES, in_pool
from service.registry import ServedModel


@dataclass(frozen=True)
class Encoded:
    latents: np.ndarray  # float32 [N, *latent_shape]
    cached: int  # tiles answered from the cache


async def encode_tiles(
    model: ServedModel,
    tiles: np.ndarray,
    *,
    cache: LatentCache | None,
    metrics: Metrics | None,
    deadline: float,
    gone: Awaitable | None = None,
    ticket: Ticket | None = None,
) -> Encoded:
    """Latents of uint8 RGB ``tiles`` [N, 32, 32, 3], from the cache where it has them."""
    if cache is None:
        latents = await model.encoder.submit(tiles, deadline=deadline, gone=gone, ticket=ticket)
        return Encoded(_finite(model, latents), 0)

    hashes = tile_hashes(tiles) if len(tiles) <= INLINE_TILES else await in_pool(lambda: tile_hashes(tiles))
    hits = {h: z for h, z in (await cache.get_many(model.key, hashes)).items() if z.shape == model.latent_shape}
    misses: dict[bytes, int] = {}  # tile hash -> its row in `computed`
    miss_rows: list[int] = []
    for i, h in enumerate(hashes):
        if h not in hits and h not in misses:
            misses[h] = len(miss_rows)
            miss_rows.append(i)
    computed = None
    if miss_rows:
        computed = _finite(model, await model.encoder.submit(tiles[miss_rows], deadline=deadline, gone=gone, ticket=ticket))
        await cache.put_many(model.key, {h: computed[j] for h, j in misses.items()})

    rows = [hits[h] if h in hits else computed[misses[h]] for h in hashes]
    latents = np.stack(rows).astype(np.float32, copy=False)  # one copy, not one assignment per tile
    cached = sum(h in hits for h in hashes)
    if metrics is not None and cached:
        metrics.cached_tiles(model.name, cached)
    return Encoded(latents, cached)


async def decode_latents(
    model: ServedModel, latents: np.ndarray, *, deadline: float, gone: Awaitable | None = None, ticket: Ticket | None = None
) -> np.ndarray:
    """uint8 RGB tiles [N, 32, 32, 3] of float32 ``latents`` [N, *latent_shape]."""
    return await model.decoder.submit(latents, deadline=deadline, gone=gone, ticket=ticket)


def _finite(model: ServedModel, latents: np.ndarray) -> np.ndarray:
    if not np.isfinite(latents).all():
        raise InferenceFailed(f"model {model.name!r} produced non-finite latents; the checkpoint may be broken")
    return latents
