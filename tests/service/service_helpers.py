"""Helpers of the service tests: apps on a checkpoint folder, request bodies, a real server."""

from __future__ import annotations

import base64
import io
import os
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
NPY = "application/x-npy"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def settings_for(checkpoint_dir: Path, **overrides) -> Settings:
    options = {"checkpoints": (checkpoint_dir,), "device": "cpu", "torch_threads": 1, "max_batch_tiles": 16}
    options.update(overrides)
    return Settings(**options)


def wait_ready(client, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get("/readyz").status_code == 200:
            return
        time.sleep(0.02)
    raise AssertionError(f"/readyz not 200 within {timeout_s} s: {client.get('/readyz').text}")


@contextmanager
def serving(checkpoint_dir: Path, **overrides):
    """A TestClient on a fresh app (lifespan running, models warm)."""
    app = create_app(settings_for(checkpoint_dir, **overrides))
    with TestClient(app) as client:
        wait_ready(client)
        yield client


def batcher(client, op: str = "encode"):
    """The named batcher of the default model of the app behind ``client``."""
    model = client.app.state.tessera.registry.get(None)
    return model.encoder if op == "encode" else model.decoder


# -- bodies ------------------------------------------------------------------------------------


def random_tiles(n: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, channels), dtype=np.uint8)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sheet_of(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles laid out row-major, built with explicit loops (independent of the service's code)."""
    sheet = np.zeros((rows * 32, cols * 32, tiles.shape[-1]), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = tile
    return sheet


# -- a real uvicorn process ----------------------------------------------------------------------


class ServerProcess:
    """``tessera serve`` in a subprocess on a free loopback port."""

    def __init__(self, checkpoint_dir: Path, log: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        environment = {**os.environ, "TESSERA_TORCH_THREADS": "1", "TESSERA_DEVICE": "cpu", **env}
        cmd = [sys.executable, "-m", "cli.main", "serve", "--port", str(self.port), "--checkpoints", str(checkpoint_dir),
               "--no-access-log"]
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=environment, stdout=self._log_file, stderr=subprocess.STDOUT)
        self.wait_ready()

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log.read_text()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server not ready within {timeout_s} s:\n{self.log.read_text()}")

    def metric(self, name: str, **labels: str) -> float:
        """Value of one series in /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=5).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith("#"):
                continue
            series, _, value = line.rpartition(" ")
            metric, _, label_text = series.partition("{")
            found = ",".join(sorted(label_text.rstrip("}").split(","))) if label_text else ""
            if metric == name and found == want:
                return float(value)
        return 0.0

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log_file.close()
        return self.process.returncode
