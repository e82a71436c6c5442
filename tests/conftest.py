"""Fixtures shared by the whole suite (their machinery lives in ``tessera.testing``)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tessera.testing.checkpoints import save_checkpoint
from tessera.testing.redis_server import RedisServer


def require_binary(name: str, package: str) -> str:
    """Path of an executable; skips the test without it, but fails under CI (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found; install the Debian package {package!r} (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A folder with one tiny DC-AE checkpoint, ``tiny.safetensors`` (random weights, seed 0)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    save_checkpoint(folder / "tiny.safetensors", metrics={"val_psnr": 12.5})
    return folder


@pytest.fixture
def redis_server(tmp_path):
    """A fresh redis-server for one test (``tessera.testing.redis_server.RedisServer``: ``.url``,
    ``.stop()``, ``.start()``, ``.kill()``, ``.pause()``, ``.resume()``)."""
    binary = require_binary("redis-server", "redis-server")
    workdir = tmp_path / "redis"
    workdir.mkdir()
    server = RedisServer(workdir, binary).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def prometheus_binary() -> str:
    """Path of Debian's ``prometheus`` (skips without it, except under CI)."""
    return require_binary("prometheus", "prometheus")


@pytest.fixture(scope="session")
def promtool_binary() -> str:
    """Path of ``promtool`` (Debian's ``prometheus`` package ships it; skips without it, except under CI)."""
    return require_binary("promtool", "prometheus")
