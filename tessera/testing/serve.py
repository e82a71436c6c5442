"""``tessera serve`` (and other servers) in a subprocess on a free loopback port, as users run it.

    with tessera_server({"TESSERA_CHECKPOINTS": "ckpt"}, log) as server:   # ready (/readyz 200)
        httpx.get(server.url + "/v1/models")
        server.metric("tessera_requests_total", endpoint="/v1/encode", status="2xx")

The server gets the ``TESSERA_*`` variables it is given and none of the caller's, so a test or a
benchmark run is not changed by what the shell that started it happens to set.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path

import httpx

from tessera.testing.ports import free_port
from tessera.testing.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 120.0  # loading, tracing and warm-up at every batch size, on a busy machine
CPU = {"TESSERA_DEVICE": "cpu", "TESSERA_TORCH_THREADS": "1"}  # what tests run on


class ProcessStartError(RuntimeError):
    """A process a test or benchmark needs did not start."""


def tessera_command() -> list[str]:
    """The installed ``tessera`` script next to this Python, else the CLI module."""
    script = Path(sys.executable).with_name("tessera")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tessera.cli.main"]


def stop_process(process: subprocess.Popen, timeout_s: float = 30.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def environment(env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without its ``TESSERA_*`` variables, plus ``env``."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    clean.update(env)
    return clean


class ServerProcess:
    """A server in a subprocess on a free loopback port; ``start()`` returns once ``ready_path``
    answers 200.

    Args:
        command: the command line, with ``{port}`` where the port goes.
        env: its ``TESSERA_*`` settings (the caller's are not passed on).
        log: where its output goes.
        ready_path: what must answer 200 before it counts as started.
    """

    def __init__(self, command: list[str], env: Mapping[str, str], log: Path, ready_path: str = "/readyz") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [part.replace("{port}", str(self.port)) for part in command]
        self.env = dict(env)
        self.log = log
        self.ready_path = ready_path
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.command, cwd=ROOT, env=environment(self.env), stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(self._ready, ready_timeout_s, what=f"{self.command[0]} ready on {self.url} (log: {self.log})")
        except BaseException:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise ProcessStartError(f"{' '.join(self.command[:3])} exited with {self.process.returncode}:\n"
                                    f"{self.log.read_text()[-3000:]}")
        try:
            return httpx.get(self.url + self.ready_path, timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Stop it (SIGTERM); its exit code (None: it never started)."""
        return None if self.process is None else stop_process(self.process, timeout_s)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class TesseraServer(ServerProcess):
    """``tessera serve`` with ``env``; ``log_level`` is uvicorn's (``info`` logs the lifespan;
    benchmarks pass ``warning``). A SIGTERM from ``stop()`` drains it."""

    def __init__(self, env: Mapping[str, str], log: Path, log_level: str = "info") -> None:
        command = [*tessera_command(), "serve", "--host", "127.0.0.1", "--port", "{port}", "--no-access-log",
                   "--log-level", log_level]
        super().__init__(command, env, log)

    def metric(self, name: str, **labels: str) -> float:
        """Value of one series in /metrics (0 when absent)."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
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


def local_server(checkpoints: Path, log: Path, **env: str) -> TesseraServer:
    """A started server on ``checkpoints`` (a folder or a file) for tests: CPU, one torch
    thread, ``env`` on top."""
    return TesseraServer({**CPU, "TESSERA_CHECKPOINTS": str(checkpoints), **env}, log).start()


@contextlib.contextmanager
def tessera_server(env: Mapping[str, str], log: Path, ready_timeout_s: float = READY_TIMEOUT_S,
                   log_level: str = "warning") -> Iterator[TesseraServer]:
    """A ready server with ``env``, stopped afterwards (benchmarks: access and info logs off)."""
    server = TesseraServer(env, log, log_level=log_level)
    try:
        server.start(ready_timeout_s)
    except AssertionError as exc:  # not ready in time
        raise ProcessStartError(str(exc)) from None
    try:
        yield server
    finally:
        server.stop()
