"""Fixtures shared by the whole suite."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def require_binary(name: str, package: str) -> str:
    """Path of an executable; skips the test without it, but fails under CI (where .ci/run installs it)."""
    path = shutil.which(name)
    if path is None:
        message = f"{name} not found; install the Debian package {package!r} (apt-get install -y {package})"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


class RedisServer:
    """A real redis-server on a free loopback port, in memory only. ``stop()`` and ``start()``
    take it down and bring it back on the same port; ``pause()``/``resume()`` freeze it
    (SIGSTOP/SIGCONT) to simulate a Redis that accepts connections but never answers."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.process is not None:
            return
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.process.returncode}; see {self.workdir}/redis.log")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.process is None:
            return
        self.resume()
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def redis_server():
    """A fresh redis-server for one test; yields a ``RedisServer`` (``.url``, ``.stop()``, ``.start()``)."""
    binary = require_binary("redis-server", "redis-server")
    with tempfile.TemporaryDirectory(prefix="tessera-redis-") as workdir:
        server = RedisServer(binary, Path(workdir))
        server.start()
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
