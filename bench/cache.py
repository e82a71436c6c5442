"""Latent cache: the same sheets uncached, then cached, with the in-process cache and Redis.

For each sheet size, one client sends distinct sheets (every tile a miss), then sends one of
those sheets again and again (every tile a hit). The speed-up is the ratio of median latencies.

    python -m bench.cache --out bench/results/cache.json
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from bench import load, results
from bench.bodies import Sheets
from bench.console import served_stage
from bench.machine import describe
from tessera.testing.redis_server import redis_server
from tessera.testing.serve import TesseraServer, tessera_server
from bench.service import Plan, measured, server_env

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachePlan:
    grids: tuple[tuple[int, int], ...] = ((16, 16), (32, 32))  # 256 and 1,024 tiles
    uncached_requests: int = 6
    cached_requests: int = 60
    backends: tuple[str, ...] = ("memory", "redis")
    threads: int = 1


QUICK = CachePlan(grids=((4, 4),), uncached_requests=2, cached_requests=5)


def sheet_case(server: TesseraServer, model: str, grid: tuple[int, int], plan: CachePlan, seed: int) -> dict:
    sheets = Sheets(*grid, count=plan.uncached_requests + 1, seed=seed)
    uncached = load.closed_loop(server.url, sheets, concurrency=1, requests=plan.uncached_requests, warmup_requests=1)
    uncached = measured(server, model, uncached)
    # sheet 1 was sent once above (measured, every tile a miss): from now on every tile is a hit
    cached = load.closed_loop(server.url, sheets.repeat(1), concurrency=1, requests=plan.cached_requests)
    cached = measured(server, model, cached, expect_cached=True)
    return {
        "tiles": grid[0] * grid[1],
        "uncached": uncached,
        "cached": cached,
        "speedup_p50": uncached["latency_ms"]["p50"] / cached["latency_ms"]["p50"],
    }


def run(checkpoint: Path, plan: CachePlan, logs: Path) -> dict:
    model = checkpoint.stem
    out: dict = {"machine": describe(), "model": model, "plan": dataclasses.asdict(plan), "backends": {}}
    base = server_env(checkpoint, Plan(threads=plan.threads))
    for backend in plan.backends:
        with contextlib.ExitStack() as stack:
            env = dict(base)
            if backend == "redis":
                env["TESSERA_REDIS_URL"] = stack.enter_context(redis_server()).url
            server = stack.enter_context(tessera_server(env, logs / f"serve-cache-{backend}.log"))
            cases = [sheet_case(server, model, grid, plan, seed=3000 + 100 * k) for k, grid in enumerate(plan.grids)]
        for case in cases:
            logger.info("%s cache, %d tiles: %.1fx faster cached", backend, case["tiles"], case["speedup_p50"])
        out["backends"][backend] = {"server_env": {k: v for k, v in env.items() if k != "TESSERA_REDIS_URL"}, "cases": cases}
    return out


def main(argv: list[str] | None = None) -> int:
    return served_stage(argv, "python -m bench.cache", __doc__, results.RESULTS / "cache.json", CachePlan(), QUICK, run)


if __name__ == "__main__":
    raise SystemExit(main())
