"""Load generator: closed-loop clients or open-loop arrivals, sent with httpx.

- ``closed_loop``: ``concurrency`` clients, each sending its next request as soon as the last
  one is answered, for a warm-up then a measured window (or a fixed number of requests).
  Counted: requests that finish inside the window.
- ``open_loop``: requests start on a fixed schedule (``rate`` per second) whether or not
  earlier ones were answered; latency runs from the scheduled start, so a server that falls
  behind shows it (no coordinated omission).

Statistics are numpy's: percentiles of the recorded latencies, nothing hand-rolled.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import numpy as np

TRANSPORT_ERROR = 0  # status recorded when no HTTP answer came back


@dataclass(frozen=True)
class Request:
    """One request to send: ``POST path`` with ``body``."""

    path: str
    body: bytes
    headers: dict[str, str]
    tiles: int


MakeRequest = Callable[[int], Request]  # the i-th request of a run


@dataclass(frozen=True)
class Shot:
    """One answered (or failed) request."""

    started: float  # perf_counter when it was due (open loop) or sent (closed loop)
    latency_s: float
    status: int
    tiles: int
    cached: int  # X-Tessera-Cached of the answer


def summarize(shots: list[Shot], elapsed_s: float) -> dict:
    """Throughput and latency of ``shots`` over a window of ``elapsed_s`` seconds."""
    statuses = collections.Counter(s.status for s in shots)
    ok = [s for s in shots if 200 <= s.status < 300]
    latencies_ms = np.array([s.latency_s for s in ok]) * 1000.0
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99]) if len(ok) else (float("nan"),) * 3
    tiles = sum(s.tiles for s in ok)
    return {
        "requests": len(shots),
        "ok": len(ok),
        "errors": len(shots) - len(ok),
        "status_503": statuses.get(503, 0),
        "transport_errors": statuses.get(TRANSPORT_ERROR, 0),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "tiles": tiles,
        "cached_tiles": sum(s.cached for s in ok),
        "elapsed_s": elapsed_s,
        "tiles_per_s": tiles / elapsed_s if elapsed_s > 0 else float("nan"),
        "requests_per_s": len(ok) / elapsed_s if elapsed_s > 0 else float("nan"),
        "latency_ms": {
            "p50": float(p50), "p95": float(p95), "p99": float(p99),
            "mean": float(latencies_ms.mean()) if len(ok) else float("nan"),
            "max": float(latencies_ms.max()) if len(ok) else float("nan"),
        },
    }


def _transport(connections: int, tls: ssl.SSLContext) -> httpx.AsyncHTTPTransport:
    """httpx's transport on ``connections`` keep-alive connections. The load generator sends
    through transports, not ``AsyncClient``: the client layer (URL merging, auth and redirect
    flows, cookie jars) would add a third to its CPU per request, and it shares the machine
    with the server it measures. Share one ``tls`` context: each new one loads the CA bundle."""
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    return httpx.AsyncHTTPTransport(limits=limits, verify=tls)


async def _send(transport: httpx.AsyncHTTPTransport, url: str, request: Request, due: float, timeout_s: float) -> Shot:
    timeout = {"connect": timeout_s, "read": timeout_s, "write": timeout_s, "pool": timeout_s}
    outgoing = httpx.Request("POST", url + request.path, content=request.body, headers=request.headers, extensions={"timeout": timeout})
    try:
        response = await transport.handle_async_request(outgoing)
        try:
            await response.aread()
        finally:
            await response.aclose()
        status, cached = response.status_code, int(response.headers.get("x-tessera-cached", 0))
    except httpx.HTTPError:
        status, cached = TRANSPORT_ERROR, 0
    return Shot(due, time.perf_counter() - due, status, request.tiles, cached)


async def closed_loop(
    url: str,
    make_request: MakeRequest,
    *,
    concurrency: int,
    duration_s: float | None = None,
    warmup_s: float = 0.0,
    requests: int | None = None,
    warmup_requests: int = 0,
    timeout_s: float = 120.0,
) -> dict:
    """``concurrency`` clients in a loop; measured for ``duration_s`` after ``warmup_s``, or over
    ``requests`` requests after ``warmup_requests`` (then the window runs from the first measured
    request's start to the last one's end)."""
    if (duration_s is None) == (requests is None):
        raise ValueError("give either duration_s or requests")
    counter = iter(range(1 << 62))
    shots: list[Shot] = []
    start = time.perf_counter()
    window_start = start + warmup_s
    window_end = window_start + duration_s if duration_s is not None else float("inf")
    total = None if requests is None else warmup_requests + requests

    async def client_loop(transport: httpx.AsyncHTTPTransport) -> None:
        while time.perf_counter() < window_end:
            i = next(counter)
            if total is not None and i >= total:
                return
            shot = await _send(transport, url, make_request(i), time.perf_counter(), timeout_s)
            done = shot.started + shot.latency_s
            if total is not None:
                if i >= warmup_requests:
                    shots.append(shot)
            elif window_start <= done <= window_end:
                shots.append(shot)

    # one transport (one connection) per client: a shared pool's bookkeeping grows with its size
    tls = ssl.create_default_context()
    transports = [_transport(1, tls) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(client_loop(transport) for transport in transports))
    finally:
        await asyncio.gather(*(transport.aclose() for transport in transports))
    if duration_s is not None:
        elapsed = duration_s
    else:
        elapsed = max((s.started + s.latency_s for s in shots), default=0) - min((s.started for s in shots), default=0)
    return {"mode": "closed", "concurrency": concurrency, **summarize(shots, elapsed)}


async def open_loop(
    url: str,
    make_request: MakeRequest,
    *,
    rate: float,
    duration_s: float,
    warmup_s: float = 0.0,
    connections: int = 512,
    timeout_s: float = 60.0,
) -> dict:
    """Requests due every ``1/rate`` s; those due in the window after ``warmup_s`` are counted,
    each from its due time to its answer. Each request in flight has a connection of its own
    (opened when none is free, up to ``connections``; beyond that a request waits for one, and
    the wait counts)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    tls = ssl.create_default_context()
    idle: list[httpx.AsyncHTTPTransport] = []
    opened: list[httpx.AsyncHTTPTransport] = []
    available = asyncio.Semaphore(connections)

    async def one(i: int, due: float) -> Shot:
        async with available:
            transport = idle.pop() if idle else None
            if transport is None:
                transport = _transport(1, tls)
                opened.append(transport)
            try:
                return await _send(transport, url, make_request(i), due, timeout_s)
            finally:
                idle.append(transport)

    start = time.perf_counter()
    window_start, window_end = start + warmup_s, start + warmup_s + duration_s
    tasks: list[tuple[bool, asyncio.Task]] = []  # (counted, task)
    try:
        i = 0
        while (due := start + i / rate) < window_end:
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append((due >= window_start, asyncio.ensure_future(one(i, due))))
            i += 1
        shots = await asyncio.gather(*(task for _, task in tasks))
    finally:
        await asyncio.gather(*(transport.aclose() for transport in opened))
    counted = [shot for (keep, _), shot in zip(tasks, shots) if keep]
    return {"mode": "open", "rate": rate, "connections_opened": len(opened), **summarize(counted, duration_s)}


def run(coro):
    """Run a load coroutine on uvloop when installed (as uvicorn does), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)
