"""RedisLatentCache against a real redis-server (the ``redis_server`` fixture)."""

import asyncio
import time

import numpy as np
import redis

from service.cache import KEY_PREFIX, CircuitBreaker, MemoryLatentCache, RedisLatentCache, make_cache

OLD = "a" * 64  # weights sha256 of a checkpoint
NEW = "b" * 64  # the same model retrained


def latents(n: int, start: int = 0) -> dict[bytes, np.ndarray]:
    return {i.to_bytes(32, "big"): np.full((64, 1, 1), i, dtype=np.float32) for i in range(start, start + n)}


class Recorder:
    def __init__(self):
        self.lookups, self.errors = [], []

    def hooks(self):
        return {"on_lookup": lambda b, hits, misses: self.lookups.append((b, hits, misses)),
                "on_error": lambda b, op: self.errors.append((b, op))}


def make(server, recorder=None, cooldown_s=0.3, timeout_s=0.1) -> RedisLatentCache:
    hooks = recorder.hooks() if recorder else {}
    return RedisLatentCache.from_url(server.url, ttl_s=60, timeout_s=timeout_s,
                                     breaker=CircuitBreaker(threshold=2, cooldown_s=cooldown_s), **hooks)


def test_second_lookup_hits_with_identical_latents(redis_server):
    items = latents(8)
    recorder = Recorder()

    async def run():
        cache = make(redis_server, recorder)
        first = await cache.get_many(OLD, list(items))
        await cache.put_many(OLD, items)
        second = await cache.get_many(OLD, list(items) + list(latents(2, start=100)))
        await cache.close()
        return first, second

    first, second = asyncio.run(run())
    assert first == {}
    assert sorted(second) == sorted(items)
    for key, value in items.items():
        np.testing.assert_array_equal(second[key], value)
    assert recorder.lookups == [("redis", 0, 8), ("redis", 8, 2)] and recorder.errors == []


def test_keys_carry_weights_hash_expire_and_retrained_model_misses(redis_server):
    items = latents(4)

    async def run():
        cache = make(redis_server)
        await cache.put_many(OLD, items)
        missed = await cache.get_many(NEW, list(items))
        await cache.close()
        return missed

    assert asyncio.run(run()) == {}
    client = redis.Redis.from_url(redis_server.url)
    keys = client.keys(b"*")
    assert len(keys) == 4
    assert all(k.startswith(KEY_PREFIX.encode() + OLD.encode() + b":") for k in keys)
    assert all(0 < client.ttl(k) <= 60 for k in keys)
    assert all(len(client.get(k)) == 3 + 3 * 2 + 64 * 4 for k in keys)  # compact binary values
    client.close()


def test_redis_down_fails_open_breaker_skips_and_hits_resume(redis_server):
    items = latents(16)
    recorder = Recorder()

    async def run():
        cache = make(redis_server, recorder, cooldown_s=0.3)
        await cache.put_many(OLD, items)
        assert len(await cache.get_many(OLD, list(items))) == 16

        redis_server.stop()
        down = []
        for _ in range(20):  # requests keep succeeding, as misses, and quickly
            t0 = time.perf_counter()
            found = await cache.get_many(OLD, list(items))
            await cache.put_many(OLD, items)
            down.append((found, time.perf_counter() - t0))
        assert all(found == {} for found, _ in down)
        assert max(dt for _, dt in down) < 0.5
        assert cache.stats.skipped >= 30  # the breaker spared Redis most of these calls
        assert cache.breaker.state.value == "open"

        redis_server.start()
        await asyncio.sleep(0.35)  # cooldown over: the next call probes Redis and closes the breaker
        await cache.put_many(OLD, items)
        resumed = await cache.get_many(OLD, list(items))
        await cache.close()
        return resumed

    resumed = asyncio.run(run())
    assert len(resumed) == 16
    assert 2 <= len(recorder.errors) <= 6 and {op for _, op in recorder.errors} <= {"get", "put"}


def test_hung_redis_times_out_as_a_miss(redis_server):
    items = latents(4)

    async def run():
        cache = make(redis_server, timeout_s=0.1, cooldown_s=10)
        await cache.put_many(OLD, items)
        redis_server.pause()
        try:
            t0 = time.perf_counter()
            first = await cache.get_many(OLD, list(items))
            slow = time.perf_counter() - t0
            await cache.get_many(OLD, list(items))  # second failure opens the breaker
            t0 = time.perf_counter()
            skipped = await cache.get_many(OLD, list(items))
            fast = time.perf_counter() - t0
        finally:
            redis_server.resume()
        await cache.close()
        return first, slow, skipped, fast, cache.stats

    first, slow, skipped, fast, stats = asyncio.run(run())
    assert first == {} and skipped == {}
    assert slow < 0.5 and fast < 0.01
    assert stats.errors == 2 and stats.skipped == 1


def test_make_cache_picks_backend_from_settings(redis_server):
    from service.settings import Settings

    hooks = Recorder().hooks()
    redis = make_cache(Settings(redis_url=redis_server.url, cache_ttl_s=30, cache_timeout_s=0.5, cache_breaker_cooldown_s=2), **hooks)
    assert isinstance(redis, RedisLatentCache)
    assert redis.timeout_s == 0.5 and redis.breaker.cooldown_s == 2
    memory = make_cache(Settings(cache_max_bytes=1 << 20), **hooks)
    assert isinstance(memory, MemoryLatentCache) and memory.max_bytes == 1 << 20


def test_breaker_probe_cycle_and_cancelled_probe():
    now = [0.0]
    breaker = CircuitBreaker(threshold=2, cooldown_s=5, clock=lambda: now[0])
    breaker.failed()
    assert breaker.allow()  # one failure is not enough
    breaker.failed()
    assert not breaker.allow()
    now[0] = 5.0
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.abandoned()  # the probe's request was cancelled
    assert breaker.allow()  # ... so the next call probes
    breaker.failed()
    assert not breaker.allow()
    now[0] = 10.0
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.allow() and breaker.allow() and breaker.state.value == "closed"
