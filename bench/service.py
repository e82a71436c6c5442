"""Service load: a real ``tessera serve`` process driven by the load generator.

- sweep: closed-loop single-tile npy encodes at each concurrency, with batching as configured
  and again with ``TESSERA_MAX_BATCH_TILES=1`` (no batching), sent by wrk (``bench.wrk``)
  where it is installed, else by the httpx generator (``bench.load``);
- sheet: one 1,024-tile PNG sheet per request, one client, every sheet distinct;
- open loop: single tiles at a fixed rate (a fraction of the 64-client throughput);
- threads: the 64-client point and the sheet again with the other torch thread count.

Every tile is distinct, so the latent cache (on, as by default) only adds its lookups.

    python -m bench.service --out bench/results/service.json
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import resource
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path

from bench import load, results, scrape, wrk
from bench.bodies import NpyTiles, Sheets
from bench.console import served_stage
from bench.machine import describe
from bench.procs import machine_busy_s, thread_cpu_s
from tessera.testing.serve import TesseraServer, tessera_server

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    concurrencies: tuple[int, ...] = (1, 4, 16, 64, 128)
    duration_s: float = 6.0  # measured window of each sweep point
    warmup_s: float = 1.5  # before it: connections open, batches fill
    sheet_grid: tuple[int, int] = (32, 32)  # 1,024 tiles
    sheet_requests: int = 6
    open_rate_fraction: float = 0.35  # of the 64-client tiles/s (the httpx generator sends it: ~0.4 ms of CPU a request)
    open_duration_s: float = 6.0
    threads: int = 1  # TESSERA_TORCH_THREADS of the server
    other_threads: int | None = 2  # measured too, at 64 clients and for the sheet; None: skip
    max_batch_tiles: int = 64
    headline_concurrency: int = 64


QUICK = Plan(concurrencies=(1, 8), duration_s=1.0, warmup_s=0.3, sheet_grid=(4, 4), sheet_requests=2,
             open_duration_s=1.0, other_threads=None, headline_concurrency=8)


def server_env(checkpoint: Path, plan: Plan, **overrides: str | int) -> dict[str, str]:
    env = {
        "TESSERA_CHECKPOINTS": str(checkpoint),
        "TESSERA_TORCH_THREADS": str(plan.threads),
        "TESSERA_MAX_BATCH_TILES": str(plan.max_batch_tiles),
    }
    env.update({f"TESSERA_{k.upper()}": str(v) for k, v in overrides.items()})
    return env


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measured(server: TesseraServer, model: str, work: Coroutine | Callable[[], dict], expect_cached: bool = False) -> dict:
    """Run one load (a ``bench.load`` coroutine, or a callable such as ``SingleTiles.closed``)
    between two /metrics scrapes; adds the server's counts and the CPU seconds of the server's
    event loop, its other threads (model calls) and the load generator (this process, or the
    wrk process it ran)."""
    before, cpu_before, busy = scrape.scrape(server.url), thread_cpu_s(server.pid), machine_busy_s()
    wall, client = time.perf_counter(), time.process_time() + children_cpu_s()
    point = load.run(work) if inspect.iscoroutine(work) else work()
    wall, client = time.perf_counter() - wall, time.process_time() + children_cpu_s() - client
    cpu_after, busy_after = thread_cpu_s(server.pid), machine_busy_s()
    point["server"] = scrape.between(before, scrape.scrape(server.url), model)
    point["cpu_s"] = {"wall": wall, "load_generator": client}
    if cpu_before and cpu_after:
        point["cpu_s"].update(server_loop=cpu_after["main"] - cpu_before["main"], server_model=cpu_after["others"] - cpu_before["others"])
        if busy is not None and busy_after is not None:  # everything else the machine ran meanwhile
            point["cpu_s"]["other_processes"] = max(0.0, busy_after - busy - client - point["cpu_s"]["server_loop"] - point["cpu_s"]["server_model"])
    if point["cached_tiles"] and not expect_cached:
        logger.warning("%d tiles came from the cache; the case meant to compute every one", point["cached_tiles"])
    logger.info(
        "%s c=%s rate=%s: %.0f tiles/s, p50 %.1f ms, p99 %.1f ms, errors %d, mean batch %s, cpu %s",
        point["mode"], point.get("concurrency"), point.get("rate"), point["tiles_per_s"], point["latency_ms"]["p50"],
        point["latency_ms"]["p99"], point["errors"], fmt_opt(point["server"]["mean_batch_tiles"]),
        {k: round(v, 2) for k, v in point["cpu_s"].items()},
    )
    return point


class SingleTiles:
    """Closed-loop single-tile encodes, every tile distinct: wrk where it is installed (a few
    microseconds of CPU a request), else the httpx generator (~0.4 ms), which on a small
    machine takes CPU the server would otherwise have."""

    def __init__(self, seed: int = 0) -> None:
        self.wrk = wrk.WrkTiles(seed) if wrk.available() else None
        self.npy = NpyTiles(seed=seed)
        if self.wrk is None:
            logger.warning("wrk not found (apt-get install -y wrk): single-tile load comes from the httpx generator")

    @property
    def generator(self) -> str:
        return "wrk" if self.wrk is not None else "httpx"

    def closed(self, url: str, concurrency: int, duration_s: float, warmup_s: float) -> Callable[[], dict]:
        """The run for ``measured``: a warm-up (connections open, batches fill), then the window."""
        if self.wrk is not None:
            def run() -> dict:
                self.wrk.run(url, concurrency=concurrency, duration_s=warmup_s)
                return self.wrk.run(url, concurrency=concurrency, duration_s=duration_s)
            return run

        def run_httpx() -> dict:
            point = load.run(load.closed_loop(url, self.npy, concurrency=concurrency, duration_s=duration_s, warmup_s=warmup_s))
            return {**point, "generator": "httpx"}
        return run_httpx


def fmt_opt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def sweep(server: TesseraServer, model: str, plan: Plan, concurrencies: tuple[int, ...], tiles: SingleTiles) -> list[dict]:
    return [measured(server, model, tiles.closed(server.url, c, plan.duration_s, plan.warmup_s)) for c in concurrencies]


def sheet(server: TesseraServer, model: str, plan: Plan, seed: int) -> dict:
    sheets = Sheets(*plan.sheet_grid, count=plan.sheet_requests + 1, seed=seed)
    return measured(server, model, load.closed_loop(server.url, sheets, concurrency=1, requests=plan.sheet_requests, warmup_requests=1))


def run(checkpoint: Path, plan: Plan, logs: Path) -> dict:
    model = checkpoint.stem
    out: dict = {"machine": describe(), "model": model, "plan": dataclasses.asdict(plan)}
    env = server_env(checkpoint, plan)
    out["server_env"] = env
    tiles = SingleTiles()
    out["generator"] = tiles.generator
    with tessera_server(env, logs / "serve-batching.log") as server:
        out["batching"] = sweep(server, model, plan, plan.concurrencies, tiles)
        out["sheet"] = sheet(server, model, plan, seed=1000)
        headline = next(p for p in out["batching"] if p["concurrency"] == plan.headline_concurrency)
        rate = max(1.0, round(plan.open_rate_fraction * headline["tiles_per_s"]))
        opened = load.open_loop(server.url, NpyTiles(seed=1), rate=rate, duration_s=plan.open_duration_s, warmup_s=plan.warmup_s)
        out["open_loop"] = measured(server, model, opened)
    with tessera_server(server_env(checkpoint, plan, max_batch_tiles=1), logs / "serve-no-batching.log") as server:
        out["no_batching"] = sweep(server, model, plan, plan.concurrencies, tiles)
    if plan.other_threads is not None:
        other = dataclasses.replace(plan, threads=plan.other_threads)
        with tessera_server(server_env(checkpoint, other), logs / "serve-threads.log") as server:
            out["other_threads"] = {
                "threads": plan.other_threads,
                "sweep": sweep(server, model, plan, (plan.headline_concurrency,), tiles),
                "sheet": sheet(server, model, plan, seed=2000),
            }
    return out


def main(argv: list[str] | None = None) -> int:
    return served_stage(argv, "python -m bench.service", __doc__, results.RESULTS / "service.json", Plan(), QUICK, run)


if __name__ == "__main__":
    raise SystemExit(main())
