"""A private ``redis-server``: in memory only, on a free loopback port.

``stop()`` and ``start()`` take it down and bring it back on the same port; ``kill()`` drops it
mid-stream (SIGKILL); ``pause()``/``resume()`` freeze it (SIGSTOP/SIGCONT), a Redis that accepts
connections but never answers.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tessera.testing.ports import free_port
from tessera.testing.serve import ProcessStartError, stop_process
from tessera.testing.waiting import wait_until

INSTALL = "redis-server not found; install the Debian package 'redis-server' (apt-get install -y redis-server)"


def redis_binary() -> str | None:
    return shutil.which("redis-server")


class RedisServer:
    def __init__(self, workdir: Path, binary: str | None = None) -> None:
        self.binary = binary or redis_binary()
        if self.binary is None:
            raise ProcessStartError(INSTALL)
        self.workdir = workdir
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 30.0) -> RedisServer:
        if self.process is not None:
            return self
        cmd = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
               "--dir", str(self.workdir), "--logfile", str(self.workdir / "redis.log")]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_until(self._answers, timeout_s, what=f"redis-server answering PING on port {self.port}")
        except AssertionError as exc:
            self.stop()
            raise ProcessStartError(str(exc)) from None
        return self

    def _answers(self) -> bool:
        if self.process.poll() is not None:
            raise ProcessStartError(f"redis-server exited with {self.process.returncode}; see {self.workdir}/redis.log")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        self.resume()
        stop_process(self.process, timeout_s=10)
        self.process = None

    def kill(self) -> None:
        """SIGKILL, not a clean shutdown: connections drop mid-stream."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def pause(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)


@contextlib.contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started ``RedisServer`` in a temporary folder, stopped afterwards."""
    with tempfile.TemporaryDirectory(prefix="tessera-redis-") as workdir:
        server = RedisServer(Path(workdir)).start()
        try:
            yield server
        finally:
            server.stop()
