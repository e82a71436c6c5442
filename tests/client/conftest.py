"""A real Tessera server for the client tests: `tessera serve` on a free port, tiny model, small limits."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera.testing.checkpoints import save_checkpoint
from tessera.testing.ports import free_port
from tessera.testing.serve import CPU, TesseraServer

API_KEY = "client-test-key"
MAX_TILES_PER_REQUEST = 16  # small, so a 5x8 sheet already needs three requests
MAX_QUEUE_TILES = 32  # small, so a burst of concurrent chunks gets 503 and must retry


@dataclass(frozen=True)
class Server:
    url: str
    api_key: str
    max_tiles_per_request: int
    env: dict[str, str]  # environment for CLI subprocesses that talk to this server
    log: Path
    server_env: dict[str, str]  # the server's own settings, for tests that need a variant of it


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
    return save_checkpoint(tmp_path_factory.mktemp("checkpoints") / "dcae-t48.safetensors").parent


@pytest.fixture(scope="session")
def server(checkpoints: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = {
        **CPU,
        "TESSERA_CHECKPOINTS": str(checkpoints),
        "TESSERA_MAX_TILES_PER_REQUEST": str(MAX_TILES_PER_REQUEST),
        "TESSERA_MAX_QUEUE_TILES": str(MAX_QUEUE_TILES),
        "TESSERA_MAX_BATCH_TILES": str(MAX_TILES_PER_REQUEST),
        "TESSERA_API_KEYS": API_KEY,
    }
    with TesseraServer(env, tmp_path_factory.mktemp("server") / "serve.log").start() as running:
        # the environment of CLI subprocesses that talk to this server: none of the caller's TESSERA_*
        client_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
        client_env.update(TESSERA_URL=running.url, TESSERA_API_KEY=API_KEY)
        yield Server(url=running.url, api_key=API_KEY, max_tiles_per_request=MAX_TILES_PER_REQUEST, env=client_env,
                     log=running.log, server_env=env)


@pytest.fixture(scope="session")
def tessera(server: Server):
    from tessera.client import Client

    with Client(server.url, api_key=API_KEY, concurrency=2) as client:
        yield client
