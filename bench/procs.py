"""The processes a benchmark talks to: ``tessera serve`` and ``redis-server`` on free ports."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.machine import ROOT


class BenchSetupError(RuntimeError):
    """A process the benchmark needs did not start."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int
    log: Path


def thread_cpu_s(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) of a process: its main thread (the server's event loop) and
    all other threads together (model calls, torch's pool). None where /proc is unavailable."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            if int(task.name) == pid:
                main += seconds
            else:
                others += seconds
    except (OSError, ValueError, IndexError):
        return None
    return {"main": main, "others": others}


def machine_busy_s() -> float | None:
    """CPU seconds all processes together have used since boot (user, nice, system, irq,
    softirq, steal), from /proc/stat; None where it is unavailable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def tessera_command() -> list[str]:
    """The installed ``tessera`` script next to this Python, else the CLI module."""
    script = Path(sys.executable).with_name("tessera")
    return [str(script)] if script.exists() else [sys.executable, "-m", "cli.main"]


def _stop(process: subprocess.Popen, timeout_s: float = 20.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def run_group(cmd: list[str], *, log: Path, timeout_s: float, env: dict[str, str] | None = None, grace_s: float = 5.0) -> int | None:
    """Run ``cmd`` in a process group of its own, output appended to ``log``: its exit code, or
    None when it ran past ``timeout_s`` and was stopped (SIGTERM, SIGKILL ``grace_s`` later).
    Either way whatever it left running in its group (a server, a training run) is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()
    return code


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@contextlib.contextmanager
def tessera_server(env: dict[str, str], log: Path, ready_timeout_s: float = 120.0) -> Iterator[Server]:
    """``tessera serve`` on a free port with ``TESSERA_*`` overrides ``env``; yields it once
    ``/readyz`` answers 200 (models loaded and warmed up). Access logging is off."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("TESSERA_")}
    full_env.update(env)
    log.parent.mkdir(parents=True, exist_ok=True)
    cmd = [*tessera_command(), "serve", "--host", "127.0.0.1", "--port", str(port), "--no-access-log", "--log-level", "warning"]
    with open(log, "wb") as out:
        process = subprocess.Popen(cmd, env=full_env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + ready_timeout_s
        while True:
            if process.poll() is not None:
                raise BenchSetupError(f"`tessera serve` exited with {process.returncode}:\n{log.read_text()[-2000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise BenchSetupError(f"`tessera serve` not ready within {ready_timeout_s} s; see {log}")
            time.sleep(0.2)
        yield Server(url, process.pid, log)
    finally:
        _stop(process)


@contextlib.contextmanager
def redis_server(timeout_s: float = 10.0) -> Iterator[str]:
    """A private, memory-only ``redis-server`` on a free loopback port; yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise BenchSetupError("redis-server not found; install it (apt-get install -y redis-server) or skip the Redis case")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="tessera-bench-redis-") as workdir:
        cmd = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", workdir]
        process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + timeout_s
            while True:
                if process.poll() is not None:
                    raise BenchSetupError(f"redis-server exited with {process.returncode}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise BenchSetupError(f"redis-server did not answer on port {port} within {timeout_s} s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            _stop(process, timeout_s=5)
