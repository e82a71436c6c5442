import asyncio

import numpy as np
import pytest

from tessera.service.pipeline.cache import MemoryLatentCache, cache_key
from tessera.testing.clock import FakeClock
from tessera.testing.events import RecordingSink

WEIGHTS = "0" * 64


def latent(i: int) -> np.ndarray:
    return np.full((64, 1, 1), i, dtype=np.float32)


def h(i: int) -> bytes:
    return i.to_bytes(32, "big")


def test_second_lookup_hits_and_arrays_are_read_only():
    events = RecordingSink()

    async def run():
        cache = MemoryLatentCache(max_bytes=1 << 20, events=events)
        assert await cache.get_many(WEIGHTS, [h(1), h(2)]) == {}
        await cache.put_many(WEIGHTS, {h(1): latent(1), h(2): latent(2)})
        found = await cache.get_many(WEIGHTS, [h(1), h(2), h(3)])
        assert sorted(found) == [h(1), h(2)]
        np.testing.assert_array_equal(found[h(2)], latent(2))
        assert not found[h(1)].flags.writeable
        assert await cache.get_many("f" * 64, [h(1)]) == {}  # other weights miss

    asyncio.run(run())
    assert events.total("cache_lookup", "hits") == 2 and events.total("cache_lookup", "misses") == 2 + 1 + 1
    assert events.count("cache_error") == 0


def test_lru_stays_within_max_bytes_and_evicts_least_recent():
    size = len(cache_key(WEIGHTS, h(0))) + latent(0).nbytes + MemoryLatentCache.ENTRY_OVERHEAD

    async def run():
        cache = MemoryLatentCache(max_bytes=3 * size)
        await cache.put_many(WEIGHTS, {h(i): latent(i) for i in range(3)})
        await cache.get_many(WEIGHTS, [h(0)])  # 0 becomes most recent; 1 is now the oldest
        await cache.put_many(WEIGHTS, {h(3): latent(3)})
        assert cache.nbytes <= cache.max_bytes and len(cache) == 3
        return sorted(await cache.get_many(WEIGHTS, [h(i) for i in range(4)]))

    assert asyncio.run(run()) == [h(0), h(2), h(3)]


def test_zero_bytes_stores_nothing_and_ttl_expires():
    clock = FakeClock()

    async def run():
        off = MemoryLatentCache(max_bytes=0)
        await off.put_many(WEIGHTS, {h(1): latent(1)})
        short = MemoryLatentCache(max_bytes=1 << 20, ttl_s=0.05, clock=clock)
        await short.put_many(WEIGHTS, {h(1): latent(1)})
        clock.advance(0.04)
        alive = sorted(await short.get_many(WEIGHTS, [h(1)]))
        clock.advance(0.01)
        return len(off), alive, await short.get_many(WEIGHTS, [h(1)]), short.nbytes

    assert asyncio.run(run()) == (0, [h(1)], {}, 0)


def test_negative_size_is_refused():
    with pytest.raises(ValueError, match="max_bytes"):
        MemoryLatentCache(max_bytes=-1)
