"""A real Tessera server for the client tests: `tessera serve` on a free port, tiny model, small limits."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

API_KEY = "client-test-key"
MAX_TILES_PER_REQUEST = 16  # small, so a 5x8 sheet already needs three requests
MAX_QUEUE_TILES = 32  # small, so a burst of concurrent chunks gets 503 and must retry
TESSERA = Path(sys.executable).with_name("tessera")  # the installed console script


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    max_tiles_per_request: int
    env: dict[str, str]  # environment for CLI subprocesses that talk to this server
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sheet_image(rows: int, cols: int, seed: int = 0) -> Image.Image:
    """An RGBA sheet of random-looking tiles with some transparency."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(rows * 32, cols * 32, 4), dtype=np.uint8)
    pixels[..., 3] = np.where(rng.random((rows * 32, cols * 32)) < 0.2, 0, 255)
    return Image.fromarray(pixels, "RGBA")


@pytest.fixture
def make_sheet():
    """sheet_image(rows, cols, seed) as a fixture, so test modules need not import this file."""
    return sheet_image


@pytest.fixture
def dead_url() -> str:
    """An address where nothing listens."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    import model

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model.save_checkpoint(model.build("dcae-t48"), folder / "dcae-t48.safetensors")
    return folder


@pytest.fixture(scope="session")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    port = free_port()
    log = tmp_path_factory.mktemp("server") / "serve.log"
    env = {
        **os.environ,
        "TESSERA_CHECKPOINTS": str(checkpoints),
        "TESSERA_MAX_TILES_PER_REQUEST": str(MAX_TILES_PER_REQUEST),
        "TESSERA_MAX_QUEUE_TILES": str(MAX_QUEUE_TILES),
        "TESSERA_MAX_BATCH_TILES": str(MAX_TILES_PER_REQUEST),
        "TESSERA_API_KEYS": API_KEY,
        "TESSERA_TORCH_THREADS": "1",
        "TESSERA_DEVICE": "cpu",
    }
    for name in ("TESSERA_URL", "TESSERA_API_KEY", "TESSERA_REDIS_URL"):
        env.pop(name, None)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(TESSERA), "serve", "--host", "127.0.0.1", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, process, log)
        client_env = {**env, "TESSERA_URL": url, "TESSERA_API_KEY": API_KEY}
        yield Server(url=url, api_key=API_KEY, max_tiles_per_request=MAX_TILES_PER_REQUEST, env=client_env, log=log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`tessera serve` exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"`tessera serve` was not ready within {timeout_s} s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="session")
def tessera(server: Server):
    from client import Client

    with Client(server.url, api_key=API_KEY, concurrency=2) as client:
        yield client
