"""Every query of the Grafana dashboard returns data from a real Prometheus scraping a real server.

The server is ``tessera serve`` (uvicorn) on a tiny dcae-t48 checkpoint with a Redis latent
cache; traffic covers encode and decode, cache hits, client errors, a full queue (503) and a
Redis outage, in two phases a few scrapes apart so that every rate() has an increase to show.
"""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

from tessera.testing.bodies import npy, png_sheet
from tessera.testing.ports import free_port
from tessera.testing.serve import local_server, stop_process
from tessera.testing.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tessera.json"
SCRAPE_S = 1
# Grafana variables -> what Grafana would send with "All" selected and a 1 s scrape interval
VARIABLES = {"$__rate_interval": "30s", "$__interval": "2s", "$__range": "5m", "${model}": ".*", "$model": ".*"}


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL with Grafana variables substituted) for every target of every panel."""
    board = json.loads(DASHBOARD.read_text())
    queries = []
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            leftover = re.findall(r"\$\{?\w+", expr)
            assert not leftover, f"{panel['title']!r}: unknown dashboard variables {leftover} in {expr}"
            queries.append((panel["title"], expr))
    return queries


@pytest.fixture
def api(checkpoint_dir, tmp_path, redis_server):
    """``tessera serve`` on the tiny checkpoint, with Redis, a small queue and small batches."""
    server = local_server(checkpoint_dir, tmp_path / "server.log", TESSERA_REDIS_URL=redis_server.url,
                          TESSERA_CACHE_TIMEOUT_S="5", TESSERA_MAX_BATCH_TILES="8", TESSERA_MAX_QUEUE_TILES="64",
                          TESSERA_MAX_TILES_PER_REQUEST="64")
    try:
        yield server.url, server.port
    finally:
        server.stop()


def answers(url: str, process: subprocess.Popen, log: Path) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.TransportError:
        return False


@pytest.fixture
def prometheus(tmp_path, prometheus_binary, api):
    """A real Prometheus on a free loopback port scraping the server every second as job "tessera"."""
    _, api_port = api
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_S}s\n"
        f"scrape_configs:\n  - job_name: tessera\n    static_configs:\n      - targets: ['127.0.0.1:{api_port}']\n"
    )
    log = tmp_path / "prometheus.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [prometheus_binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: answers(f"http://127.0.0.1:{port}/-/ready", process, log), what="Prometheus is ready")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def send_traffic(api: str, phase: int, redis_server=None) -> None:
    with httpx.Client(base_url=api, timeout=30) as http:
        for seed in range(3):  # twice each: misses, then cache hits
            for _ in range(2):
                r = http.post("/v1/encode", content=png_sheet(100 * phase + seed, rows=4, cols=4), headers={"Content-Type": "image/png",
                                                                                           "Accept": "application/x-npy"})
                assert r.status_code == 200, r.text
        latents = np.load(io.BytesIO(r.content))
        assert http.post("/v1/decode", content=npy(latents), headers={"Content-Type": "application/x-npy"}).status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.post("/v1/encode?model=nope", content=b"x", headers={"Content-Type": "image/png"}).status_code == 404
        assert http.post("/v1/encode", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415

        # a burst larger than the queue (64 tiles): some tiles are rejected with 503 queue_full
        # (a burst that the server happens to keep up with is sent again, with new tiles)
        for burst in range(3):
            tiles = np.random.default_rng((1000 + phase, burst)).integers(0, 256, size=(16, 64, 32, 32, 3), dtype=np.uint8)
            with ThreadPoolExecutor(16) as pool:
                codes = list(pool.map(lambda t: http.post("/v1/encode", content=npy(t),
                                                          headers={"Content-Type": "application/x-npy"}).status_code, tiles))
            assert set(codes) <= {200, 503}, codes
            if 503 in codes:
                break
        assert 503 in codes, "three bursts larger than the queue, and not one request was refused"

        if redis_server is None:
            return
        # Redis down: encode still answers; the cache errors are counted (and the breaker then
        # skips Redis for a few seconds, so this comes last)
        redis_server.stop()
        try:
            r = http.post("/v1/encode", content=png_sheet(500 + phase, rows=4, cols=4), headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["cached"] == 0
        finally:
            redis_server.start()


def query(prometheus: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def wait_for_scrape(prometheus: str) -> None:
    """Until Prometheus stores a scrape of the server that started after this call."""
    start = time.time()

    def scraped() -> bool:
        result = query(prometheus, 'timestamp(up{job="tessera"})')
        return bool(result) and float(result[0]["value"][1]) > start

    wait_until(scraped, what="Prometheus scraped the server", interval_s=0.2)


def has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


@pytest.mark.slow
def test_every_dashboard_query_returns_data(api, prometheus, redis_server):
    url, _ = api
    queries = dashboard_queries()
    assert len(queries) >= 15

    wait_for_scrape(prometheus)  # Prometheus has seen the idle server,
    send_traffic(url, 1)
    wait_for_scrape(prometheus)  # ... then the first phase; the second one makes every rate() move
    send_traffic(url, 2, redis_server)

    missing = queries

    def all_have_data() -> bool:
        nonlocal missing
        missing = [(title, expr) for title, expr in missing if not has_data(query(prometheus, expr))]
        return not missing

    try:
        wait_until(all_have_data, what="every dashboard query returns data", interval_s=SCRAPE_S)
    except AssertionError:
        raise AssertionError("dashboard queries without data:\n" + "\n".join(f"  {t}: {e}" for t, e in missing)) from None

    # and the numbers mean what the panels say
    hit_ratio = [e for t, e in queries if t == "Cache hit ratio"][0]
    assert 0 < float(query(prometheus, hit_ratio)[0]["value"][1]) < 1  # repeats hit, the 503 burst misses
    up = query(prometheus, 'up{job="tessera"}')
    assert up and up[0]["value"][1] == "1"
