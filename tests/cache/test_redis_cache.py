"""RedisLatentCache against a real redis-server (the ``redis_server`` fixture). The circuit
breaker runs on a ``FakeClock``: its cooldown passes when a test says so."""

import asyncio

import numpy as np
import redis

from tessera.service.pipeline.cache import KEY_PREFIX, CircuitBreaker, MemoryLatentCache, RedisLatentCache, make_cache
from tessera.testing.clock import FakeClock
from tessera.testing.events import RecordingSink

OLD = "a" * 64  # weights sha256 of a checkpoint
NEW = "b" * 64  # the same model retrained


def latents(n: int, start: int = 0) -> dict[bytes, np.ndarray]:
    return {i.to_bytes(32, "big"): np.full((64, 1, 1), i, dtype=np.float32) for i in range(start, start + n)}


def make(server, events=None, cooldown_s=0.3, timeout_s=5.0, clock=None) -> RedisLatentCache:
    breaker = CircuitBreaker(threshold=2, cooldown_s=cooldown_s, clock=clock or FakeClock())
    return RedisLatentCache.from_url(server.url, ttl_s=60, timeout_s=timeout_s, breaker=breaker, events=events or RecordingSink())


def lookups(events: RecordingSink) -> list[tuple[str, int, int]]:
    return [(e["backend"], e["hits"], e["misses"]) for e in events.of("cache_lookup")]


def test_second_lookup_hits_with_identical_latents(redis_server):
    items = latents(8)
    events = RecordingSink()

    async def run():
        cache = make(redis_server, events)
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
    assert lookups(events) == [("redis", 0, 8), ("redis", 8, 2)] and events.count("cache_error") == 0


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
    events, clock = RecordingSink(), FakeClock()

    async def run():
        cache = make(redis_server, events, cooldown_s=0.3, clock=clock)
        await cache.put_many(OLD, items)
        assert len(await cache.get_many(OLD, list(items))) == 16

        redis_server.stop()
        for _ in range(20):  # requests keep succeeding, as misses
            assert await cache.get_many(OLD, list(items)) == {}
            await cache.put_many(OLD, items)
        assert events.count("cache_error") == 2  # two failures open the breaker ...
        assert events.count("cache_skipped") == 38  # ... and it spares Redis every later call
        assert cache.breaker.state.value == "open"

        redis_server.start()
        clock.advance(0.3)  # cooldown over: the next call probes Redis and closes the breaker
        await cache.put_many(OLD, items)
        resumed = await cache.get_many(OLD, list(items))
        await cache.close()
        return resumed

    resumed = asyncio.run(run())
    assert len(resumed) == 16
    assert {e["op"] for e in events.of("cache_error")} <= {"get", "put"}


def test_a_hung_redis_times_out_as_a_miss(redis_server):
    items = latents(4)
    events = RecordingSink()

    async def run():
        cache = make(redis_server, events, timeout_s=1.0, cooldown_s=10)
        await cache.put_many(OLD, items)
        redis_server.pause()
        try:
            first = await cache.get_many(OLD, list(items))  # times out
            await cache.get_many(OLD, list(items))  # the second failure opens the breaker
            skipped = await cache.get_many(OLD, list(items))  # not sent to Redis at all
        finally:
            redis_server.resume()
        await cache.close()
        return first, skipped

    first, skipped = asyncio.run(run())
    assert first == {} and skipped == {}
    assert events.count("cache_error", op="get") == 2 and events.of("cache_skipped") == [{"backend": "redis", "op": "get"}]
    assert lookups(events)[-3:] == [("redis", 0, 4)] * 3  # every one a miss to the caller


def test_make_cache_picks_backend_from_settings(redis_server):
    from tessera.service.runtime.settings import Settings

    events = RecordingSink()
    redis = make_cache(Settings(redis_url=redis_server.url, cache_ttl_s=30, cache_timeout_s=0.5, cache_breaker_cooldown_s=2), events)
    assert isinstance(redis, RedisLatentCache)
    assert redis.timeout_s == 0.5 and redis.breaker.cooldown_s == 2 and redis.events is events
    memory = make_cache(Settings(cache_max_bytes=1 << 20), events)
    assert isinstance(memory, MemoryLatentCache) and memory.max_bytes == 1 << 20 and memory.events is events


def test_breaker_probe_cycle_and_cancelled_probe():
    clock = FakeClock()
    breaker = CircuitBreaker(threshold=2, cooldown_s=5, clock=clock)
    breaker.failed()
    assert breaker.allow()  # one failure is not enough
    breaker.failed()
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow() and not breaker.allow()  # one probe at a time
    breaker.abandoned()  # the probe's request was cancelled
    assert breaker.allow()  # ... so the next call probes
    breaker.failed()
    assert not breaker.allow()
    clock.advance(5)
    assert breaker.allow()
    breaker.succeeded()
    assert breaker.allow() and breaker.allow() and breaker.state.value == "closed"
