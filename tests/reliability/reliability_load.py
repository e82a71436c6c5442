"""Load for the reliability tests: closed-loop clients in a background thread (while the test
kills Redis or sends SIGTERM), an open-loop burst at a fixed rate, and RSS sampling of the server.

Every answer is kept as a ``Shot`` with absolute ``time.monotonic()`` stamps, so a test can
split a run into phases (before, during, after a fault) afterwards.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

from tessera.testing.waiting import wait_until

CONNECT_ERROR = -1  # never reached the server (refused): not a lost request
LOST = 0  # sent, but no HTTP answer came back


@dataclass(frozen=True)
class Shot:
    index: int  # the i given to Make
    sent: float  # time.monotonic() when it was due (open loop) or sent (closed loop)
    latency_s: float
    status: int  # HTTP status, or CONNECT_ERROR / LOST
    code: str | None  # the error body's "code"
    retry_after: str | None
    cached: int

    @property
    def done(self) -> float:
        return self.sent + self.latency_s


Make = Callable[[int], tuple[str, bytes, dict[str, str]]]  # i -> (path, body, headers)


async def _send(client: httpx.AsyncClient, make: Make, i: int, due: float) -> Shot:
    path, body, headers = make(i)
    try:
        response = await client.post(path, content=body, headers=headers)
    except httpx.ConnectError:
        return Shot(i, due, time.monotonic() - due, CONNECT_ERROR, None, None, 0)
    except httpx.HTTPError:
        return Shot(i, due, time.monotonic() - due, LOST, None, None, 0)
    code = None
    if response.status_code >= 400 and response.headers.get("content-type", "").startswith("application/json"):
        code = response.json().get("code")
    cached = int(response.headers.get("x-tessera-cached", 0))
    return Shot(i, due, time.monotonic() - due, response.status_code, code, response.headers.get("retry-after"), cached)


class BackgroundLoad:
    """``clients`` closed-loop clients in their own thread and event loop until ``stop()``.

    A client stops by itself after an answer ``until(shot)`` is true (e.g. a 503 while draining).
    """

    def __init__(self, url: str, make: Make, clients: int, until: Callable[[Shot], bool] | None = None) -> None:
        self.url, self.make, self.clients, self.until = url, make, clients, until
        self.shots: list[Shot] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), name="reliability-load", daemon=True)

    async def _run(self) -> None:
        counter = iter(range(1 << 62))
        limits = httpx.Limits(max_connections=self.clients, max_keepalive_connections=self.clients)
        async with httpx.AsyncClient(base_url=self.url, timeout=30.0, limits=limits) as client:

            async def loop() -> None:
                while not self._stop.is_set():
                    shot = await _send(client, self.make, next(counter), time.monotonic())
                    self.shots.append(shot)
                    if self.until is not None and self.until(shot):
                        return

            await asyncio.gather(*(loop() for _ in range(self.clients)))

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, timeout_s: float = 60.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            raise AssertionError(f"load clients did not finish within {timeout_s} s (a request hangs)")

    def wait_for(self, condition: Callable[[list[Shot]], bool], timeout_s: float = 30.0) -> None:
        """Until ``condition(shots)`` (while the clients run), within ``timeout_s``."""

        def met() -> bool:
            if condition(self.shots):
                return True
            if not self._thread.is_alive():
                raise AssertionError("the load clients stopped before the condition was met")
            return False

        wait_until(met, timeout_s, what=getattr(condition, "__name__", "load condition"), interval_s=0.02)


async def _open_loop(url: str, make: Make, rate: float, duration_s: float, connections: int) -> list[Shot]:
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
        start = time.monotonic()
        tasks, i = [], 0
        while (due := start + i / rate) < start + duration_s:
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(_send(client, make, i, due)))
            i += 1
        return list(await asyncio.gather(*tasks))


def open_loop(url: str, make: Make, rate: float, duration_s: float, connections: int = 512) -> list[Shot]:
    """Requests due every ``1 / rate`` s for ``duration_s``, whether or not earlier ones were
    answered; latency runs from the due time (a server that falls behind shows it)."""
    return asyncio.run(_open_loop(url, make, rate, duration_s, connections))


def closed_loop(url: str, make: Make, clients: int, duration_s: float) -> list[Shot]:
    with BackgroundLoad(url, make, clients) as load:
        time.sleep(duration_s)
    return load.shots


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


class RssSampler:
    """Samples a process's resident memory every ``interval_s`` in a thread; ``peak`` after."""

    def __init__(self, pid: int, interval_s: float = 0.05) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(rss_bytes(self.pid))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak(self) -> int:
        return max(self.samples)


def latency_ms(shots: list[Shot]) -> dict[str, float]:
    """p50, p95 and max of the answered requests' latencies."""
    values = np.array([s.latency_s for s in shots if s.status > 0]) * 1000
    if not len(values):
        return {"p50": float("nan"), "p95": float("nan"), "max": float("nan")}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 2), "p95": round(float(p95), 2), "max": round(float(values.max()), 2)}


class CpuHog:
    """One busy-looping process per core while the block runs: the machine suddenly gets slower,
    as when another job lands on it."""

    def __init__(self, processes: int | None = None) -> None:
        import os

        self.count = processes or os.cpu_count() or 1
        self._procs: list = []

    def __enter__(self) -> CpuHog:
        import subprocess
        import sys

        self._procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(self.count)]
        return self

    def __exit__(self, *exc) -> None:
        for proc in self._procs:
            proc.kill()
            proc.wait()
