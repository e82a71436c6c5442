"""The latent cache through the app (create_app + TestClient): what encode callers see."""

from __future__ import annotations

import redis
from prometheus_client.parser import text_string_to_metric_families

from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, png_sheet
from tessera.testing.clock import FakeClock


def sheet(seed: int) -> bytes:
    return png_sheet(seed, rows=3, cols=4)


def encode(client, body: bytes, accept: str = "application/json"):
    r = client.post("/v1/encode", content=body, headers={"Content-Type": "image/png", "Accept": accept})
    assert r.status_code == 200, r.text
    return r


def metric(client, name: str, **labels) -> float:
    total = 0.0
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def test_second_encode_of_a_sheet_is_cached_in_memory(tiny_checkpoints):
    with serving(tiny_checkpoints) as client:
        first = encode(client, sheet(1)).json()
        second = encode(client, sheet(1)).json()
        as_npy = encode(client, sheet(1), accept=NPY)
        assert (first["count"], first["cached"], second["cached"]) == (12, 0, 12)
        assert second["latents"] == first["latents"]
        assert as_npy.headers["X-Tessera-Cached"] == "12"
        assert metric(client, "tessera_cache_hits_total", backend="memory") == 24
        assert metric(client, "tessera_tiles_total", source="cache") == 24


def test_redis_cache_hits_and_retrained_model_misses(tiny_checkpoints, retrained_checkpoints, redis_server):
    with serving(tiny_checkpoints, redis_url=redis_server.url, cache_timeout_s=5) as client:
        weights = client.get("/v1/models").json()["models"][0]["weights_sha256"]
        first = encode(client, sheet(2)).json()
        second = encode(client, sheet(2)).json()
        assert (first["cached"], second["cached"]) == (0, 12) and second["latents"] == first["latents"]

    keys = redis.Redis.from_url(redis_server.url).keys(b"*")
    assert len(keys) == 12 and all(k.startswith(f"tessera:v1:{weights}:".encode()) for k in keys)

    with serving(retrained_checkpoints, redis_url=redis_server.url, cache_timeout_s=5) as client:
        retrained = encode(client, sheet(2)).json()
        assert client.get("/v1/models").json()["models"][0]["weights_sha256"] != weights
        assert retrained["cached"] == 0 and retrained["latents"] != first["latents"]
        assert encode(client, sheet(2)).json()["cached"] == 12

    with serving(tiny_checkpoints, redis_url=redis_server.url, cache_timeout_s=5) as client:  # the original weights still hit
        assert encode(client, sheet(2)).json()["latents"] == first["latents"]


def test_redis_outage_is_invisible_to_callers(tiny_checkpoints, redis_server):
    with serving(tiny_checkpoints, redis_url=redis_server.url, cache_timeout_s=5) as client:
        breaker = client.app.state.tessera.cache.breaker
        breaker.clock = FakeClock()
        reference = encode(client, sheet(3)).json()

        redis_server.stop()
        for _ in range(5):
            down = encode(client, sheet(3)).json()
            assert down["cached"] == 0 and down["latents"] == reference["latents"]
        errors = metric(client, "tessera_cache_errors_total", backend="redis")
        assert 2 <= errors <= 4  # the breaker opened after two failures and skipped the rest

        redis_server.start()
        breaker.clock.advance(breaker.cooldown_s)  # the cooldown is over: the next call probes Redis
        encode(client, sheet(3))  # the breaker's probe succeeds; this request stores the latents again
        assert encode(client, sheet(3)).json()["cached"] == 12
