"""The benchmark's wrk load: its Lua script drives a real ``tessera serve`` with distinct
single-tile encodes, and its JSON line becomes the load generator's usual summary."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tessera.testing.serve import tessera_server
from bench.wrk import WrkTiles

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk not found; install the Debian package 'wrk'")


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    env = {"TESSERA_CHECKPOINTS": str(checkpoint_dir), "TESSERA_TORCH_THREADS": "1", "TESSERA_MAX_BATCH_TILES": "8"}
    with tessera_server(env, Path(tmp_path_factory.mktemp("logs")) / "serve.log") as running:
        yield running


def test_wrk_sends_distinct_tiles_and_reports_like_the_httpx_generator(server):
    tiles = WrkTiles(seed=3)
    try:
        first = tiles.run(server.url, concurrency=4, duration_s=1)
        second = tiles.run(server.url, concurrency=4, duration_s=1)  # starts past the first run's tiles
    finally:
        tiles.close()
    for point in (first, second):
        assert point["generator"] == "wrk" and point["concurrency"] == 4
        assert point["ok"] > 0 and point["errors"] == 0 and set(point["statuses"]) == {"200"}
        assert point["tiles"] == point["ok"] and point["tiles_per_s"] == pytest.approx(point["ok"] / point["elapsed_s"])
        assert point["cached_tiles"] == 0  # every tile new to the server's latent cache, across runs too
        assert 0 < point["latency_ms"]["p50"] <= point["latency_ms"]["p99"] <= point["latency_ms"]["max"]
    again = WrkTiles(seed=3)  # the same tiles as `first`, from the start: the cache answers them
    try:
        repeat = again.run(server.url, concurrency=1, duration_s=1)
    finally:
        again.close()
    assert 0 < repeat["cached_tiles"] <= repeat["ok"]
