"""Every query of the Grafana dashboard returns data from a real Prometheus scraping a real server.

The server is ``tessera serve`` (uvicorn) on a tiny dcae-t48 checkpoint with a Redis latent
cache; traffic covers encode and decode, cache hits, client errors, a full queue (503) and a
Redis outage, in two phases a few scrapes apart so that every rate() has an increase to show.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "tessera.json"
SCRAPE_S = 1
# Grafana variables -> what Grafana would send with "All" selected and a 1 s scrape interval
VARIABLES = {"$__rate_interval": "30s", "$__interval": "2s", "$__range": "5m", "${model}": ".*", "$model": ".*"}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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


def wait_http(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[0]} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready within {timeout_s} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def tessera_server(tmp_path, redis_server):
    """``tessera serve`` on a tiny checkpoint, with Redis, a small queue and small batches."""
    import torch

    import model

    torch.manual_seed(0)
    (tmp_path / "ckpt").mkdir()
    model.save_checkpoint(model.build("dcae-t48"), tmp_path / "ckpt" / "tiny.safetensors")
    port = free_port()
    env = {**os.environ, "TESSERA_CHECKPOINTS": str(tmp_path / "ckpt"), "TESSERA_REDIS_URL": redis_server.url,
           "TESSERA_DEVICE": "cpu", "TESSERA_TORCH_THREADS": "1", "TESSERA_MAX_BATCH_TILES": "8",
           "TESSERA_MAX_QUEUE_TILES": "64", "TESSERA_MAX_TILES_PER_REQUEST": "64"}
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "cli.main", "serve", "--port", str(port), "--no-access-log"],
                                   cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz", process, log)
        yield f"http://127.0.0.1:{port}", port
    finally:
        stop(process)


@pytest.fixture
def prometheus(tmp_path, prometheus_binary, tessera_server):
    """A real Prometheus on a free loopback port scraping the server every second as job "tessera"."""
    _, api_port = tessera_server
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
        wait_http(f"http://127.0.0.1:{port}/-/ready", process, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def png_sheet(seed: int, rows: int = 4, cols: int = 4) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(rows * 32, cols * 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def send_traffic(api: str, phase: int, redis_server=None) -> None:
    with httpx.Client(base_url=api, timeout=30) as http:
        for seed in range(3):  # twice each: misses, then cache hits
            for _ in range(2):
                r = http.post("/v1/encode", content=png_sheet(100 * phase + seed), headers={"Content-Type": "image/png",
                                                                                           "Accept": "application/x-npy"})
                assert r.status_code == 200, r.text
        latents = np.load(io.BytesIO(r.content))
        assert http.post("/v1/decode", content=npy(latents), headers={"Content-Type": "application/x-npy"}).status_code == 200
        assert http.get("/v1/models").status_code == 200
        assert http.post("/v1/encode?model=nope", content=b"x", headers={"Content-Type": "image/png"}).status_code == 404
        assert http.post("/v1/encode", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415

        # a burst larger than the queue (64 tiles): some tiles are rejected with 503 queue_full
        tiles = np.random.default_rng(1000 + phase).integers(0, 256, size=(16, 64, 32, 32, 3), dtype=np.uint8)
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(lambda t: http.post("/v1/encode", content=npy(t),
                                                      headers={"Content-Type": "application/x-npy"}).status_code, tiles))
        assert set(codes) <= {200, 503} and 503 in codes, codes

        if redis_server is None:
            return
        # Redis down: encode still answers; the cache errors are counted (and the breaker then
        # skips Redis for a few seconds, so this comes last)
        redis_server.stop()
        try:
            r = http.post("/v1/encode", content=png_sheet(500 + phase), headers={"Content-Type": "image/png"})
            assert r.status_code == 200 and r.json()["cached"] == 0
        finally:
            redis_server.start()


def query(prometheus: str, expr: str) -> list[dict]:
    r = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    assert r.status_code == 200, f"{expr}: {r.text}"
    return r.json()["data"]["result"]


def wait_for_scrape(prometheus: str, timeout_s: float = 30) -> None:
    """Until Prometheus stores a scrape of the server that started after this call."""
    start = time.time()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        result = query(prometheus, 'timestamp(up{job="tessera"})')
        if result and float(result[0]["value"][1]) > start:
            return
        time.sleep(0.2)
    raise AssertionError(f"Prometheus did not scrape the server within {timeout_s} s")


def has_data(result: list[dict]) -> bool:
    return any(math.isfinite(float(series["value"][1])) for series in result)


def test_every_dashboard_query_returns_data(tessera_server, prometheus, redis_server):
    api, _ = tessera_server
    queries = dashboard_queries()
    assert len(queries) >= 15

    wait_for_scrape(prometheus)  # Prometheus has seen the idle server,
    send_traffic(api, 1)
    wait_for_scrape(prometheus)  # ... then the first phase; the second one makes every rate() move
    send_traffic(api, 2, redis_server)

    missing = queries
    deadline = time.monotonic() + 20
    while missing and time.monotonic() < deadline:
        time.sleep(SCRAPE_S)
        missing = [(title, expr) for title, expr in missing if not has_data(query(prometheus, expr))]
    assert not missing, "dashboard queries without data:\n" + "\n".join(f"  {t}: {e}" for t, e in missing)

    # and the numbers mean what the panels say
    hit_ratio = [e for t, e in queries if t == "Cache hit ratio"][0]
    assert 0 < float(query(prometheus, hit_ratio)[0]["value"][1]) < 1  # repeats hit, the 503 burst misses
    up = query(prometheus, 'up{job="tessera"}')
    assert up and up[0]["value"][1] == "1"
