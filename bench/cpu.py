"""CPU per request, in one run: the server, its model at the batch size it formed, and the bare
framework. What is left is what the service itself spends.

For single-tile npy encodes from wrk (``bench.wrk``; the httpx generator without it) at 1, 16
and 64 connections, every tile distinct:

- *server*: the CPU time of the whole ``tessera serve`` process (every thread, from
  ``/proc/<pid>/stat``) over the measured window, per tile answered. Process CPU time is what
  this machine's hypervisor steal does not inflate the way it inflates wall time;
- *model*: the raw model call the server makes (``service.graphs``, traced, the same torch
  threads), CPU time of this process per tile, at the server's mean batch size for that
  connection count (from its ``tessera_batch_size_tiles`` histogram);
- *floor*: a bare FastAPI + uvicorn app (``bench.floor_app``) that reads the same body and
  answers a fixed npy latent, its process CPU per request under the same load.

Per single-tile request: floor, model, and the rest (server - model - floor). Targets (issue
15): the server's CPU beyond its model at most 2x the floor; at 64 connections, the server's
CPU per tile at most 1.3x the model's at the served batch size.

    python -m bench.cpu --out bench/results/cpu.json
"""

from __future__ import annotations

import dataclasses
import logging
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench import load, results, scrape
from bench.console import served_stage
from bench.machine import describe
from bench.procs import machine_busy_s, process_cpu_s, thread_cpu_s
from bench.service import SingleTiles
from tests.support.serve import ServerProcess, tessera_server

logger = logging.getLogger(__name__)

TARGET_REST_OVER_FLOOR = 2.0  # (server - model) / floor, per single-tile request
TARGET_SERVER_OVER_MODEL = 1.3  # server / model per tile, at TARGET_CONNECTIONS
TARGET_CONNECTIONS = 64


@dataclass(frozen=True)
class Plan:
    connections: tuple[int, ...] = (1, 16, 64)
    duration_s: float = 6.0  # measured window of each point
    warmup_s: float = 1.5  # before it: connections open, batches fill
    threads: int = 1  # TESSERA_TORCH_THREADS of the server, and the raw model's
    max_batch_tiles: int = 64
    raw_min_s: float = 1.0  # CPU seconds of raw model calls per batch size


QUICK = Plan(connections=(1, 16), duration_s=1.0, warmup_s=0.3, raw_min_s=0.05)


def children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def closed_loop(tiles: SingleTiles, url: str, connections: int, seconds: float) -> dict:
    """One closed-loop run of single-tile encodes, wrk's or httpx's summary."""
    if tiles.wrk is not None:
        return tiles.wrk.run(url, concurrency=connections, duration_s=seconds)
    point = load.run(load.closed_loop(url, tiles.npy, concurrency=connections, duration_s=seconds, warmup_s=0))
    return {**point, "generator": "httpx"}


def cpu_point(server: ServerProcess, tiles: SingleTiles, connections: int, plan: Plan, model: str | None) -> dict:
    """The process CPU of ``server`` per answered request over one measured window (after a
    warm-up); with ``model``, the server's own counts from /metrics (batch sizes)."""
    closed_loop(tiles, server.url, connections, plan.warmup_s)
    before = scrape.scrape(server.url) if model else None
    cpu, busy, generator = process_cpu_s(server.pid), machine_busy_s(), children_cpu_s()
    threads = thread_cpu_s(server.pid)
    wall = time.perf_counter()
    point = closed_loop(tiles, server.url, connections, plan.duration_s)
    wall = time.perf_counter() - wall
    cpu, generator = process_cpu_s(server.pid) - cpu, children_cpu_s() - generator
    after = thread_cpu_s(server.pid)
    busy = machine_busy_s() - busy if busy is not None else None
    out = {
        "connections": connections, "requests": point["ok"], "errors": point["errors"], "wall_s": wall,
        "cpu_s": cpu, "us_per_request": 1e6 * cpu / point["ok"] if point["ok"] else None,
        "load_generator_cpu_s": generator, "latency_ms": point["latency_ms"], "cached_tiles": point["cached_tiles"],
        # cores' worth of CPU other processes used meanwhile: well above 0, the point shared the machine
        "other_cores": None if busy is None else max(0.0, busy - cpu - generator) / wall,
    }
    if threads and after and point["ok"]:  # the main thread runs the event loop; the others are the model's
        out["loop_us_per_request"] = 1e6 * (after["main"] - threads["main"]) / point["ok"]
        out["model_thread_us_per_request"] = 1e6 * (after["others"] - threads["others"]) / point["ok"]
    if model:
        out["server"] = scrape.between(before, scrape.scrape(server.url), model)
    logger.info("%s c=%d: %s us CPU per request, %d requests, %d errors, mean batch %s", "server" if model else "floor",
                connections, fmt(out["us_per_request"]), point["ok"], point["errors"],
                fmt(out.get("server", {}).get("mean_batch_tiles")))
    return out


def fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def raw_cpu_per_tile(checkpoint: Path, threads: int, batches: list[int], min_cpu_s: float,
                     pause_s: float) -> tuple[dict[int, float], float]:
    """CPU microseconds per tile of the server's traced encode call, at each batch size, in this
    process (every thread of it: torch's pool too); and at batch 1 with each call after a
    ``pause_s`` sleep, as a lone client's requests find the model."""
    import numpy as np
    import torch

    import model
    from service.graphs import make_calls
    from service.malloc_tuning import keep_freed_memory

    keep_freed_memory()  # as the server does
    torch.set_num_threads(threads)
    module, _ = model.load_checkpoint(checkpoint, device="cpu", dtype=torch.float32)
    encode, _, graph = make_calls(module.eval(), "cpu", torch.float32, "trace", checkpoint.stem)
    rng = np.random.default_rng(0)
    for n in range(1, max(batches) + 1):  # the server's warm-up: every batch size once
        encode(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))
    out = {}
    for batch in batches:
        tiles = rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
        calls, start = 0, time.process_time()
        while calls < 3 or time.process_time() - start < min_cpu_s:
            encode(tiles)
            calls += 1
        out[batch] = 1e6 * (time.process_time() - start) / (calls * batch)
        logger.info("raw %s (%s) batch %d: %.1f us CPU per tile", checkpoint.stem, graph, batch, out[batch])
    one, calls, cpu = tiles[:1], 0, 0.0
    while calls < 3 or cpu < min_cpu_s:
        time.sleep(pause_s)
        start = time.process_time()
        encode(one)
        cpu += time.process_time() - start
        calls += 1
    paused = 1e6 * cpu / calls
    logger.info("raw %s (%s) batch 1 after %.2f ms pauses: %.1f us CPU per tile", checkpoint.stem, graph,
                1e3 * pause_s, paused)
    return out, paused


def model_thread_pause_s(point: dict) -> float:
    """How long the model thread was idle per request in ``point``: wall time per request less its
    CPU per request (with one connection, the pause before each of its calls)."""
    busy_us = point.get("model_thread_us_per_request")
    if not point["requests"] or busy_us is None:
        return 0.0
    return max(0.0, point["wall_s"] / point["requests"] - busy_us / 1e6)


def floor_server(log: Path) -> ServerProcess:
    command = [sys.executable, "-m", "uvicorn", "--factory", "bench.floor_app:create_app", "--host", "127.0.0.1",
               "--port", "{port}", "--no-access-log", "--log-level", "warning"]
    return ServerProcess(command, {}, log)


def breakdown(server: dict, floor: dict | None, model_us: float | None) -> dict:
    """Per single-tile request: floor, model and the rest, and the two target ratios."""
    total, floor_us = server["us_per_request"], (floor or {}).get("us_per_request")
    out = {"server_us": total, "model_us": model_us, "floor_us": floor_us, "rest_us": None,
           "rest_over_floor": None, "server_over_model": None}
    if total is not None and model_us:
        out["server_over_model"] = total / model_us
        if floor_us:
            out["rest_us"] = total - model_us - floor_us
            out["rest_over_floor"] = (total - model_us) / floor_us
    return out


def run(checkpoint: Path, plan: Plan, logs: Path) -> dict:
    model = checkpoint.stem
    out: dict = {"machine": describe(), "model": model, "plan": dataclasses.asdict(plan),
                 "targets": {"rest_over_floor": TARGET_REST_OVER_FLOOR, "server_over_model": TARGET_SERVER_OVER_MODEL,
                             "connections": TARGET_CONNECTIONS}}
    tiles = SingleTiles(seed=11)
    out["generator"] = tiles.generator
    with floor_server(logs / "floor.log").start() as floor:
        floors = {c: cpu_point(floor, tiles, c, plan, None) for c in plan.connections}
    env = {"TESSERA_CHECKPOINTS": str(checkpoint), "TESSERA_TORCH_THREADS": str(plan.threads),
           "TESSERA_MAX_BATCH_TILES": str(plan.max_batch_tiles)}
    out["server_env"] = env
    with tessera_server(env, logs / "serve-cpu.log") as server:
        servers = {c: cpu_point(server, tiles, c, plan, model) for c in plan.connections}
    formed = {c: max(1, round(p["server"]["mean_batch_tiles"] or 1)) for c, p in servers.items()}
    pause = model_thread_pause_s(servers[min(servers)])
    raw, paused = raw_cpu_per_tile(checkpoint, plan.threads, sorted(set(formed.values()) | {1}), plan.raw_min_s, pause)
    out["model_after_pause"] = {"pause_s": pause, "batch": 1, "us_per_tile": paused, "back_to_back_us": raw[1],
                                "connections": min(servers)}
    out["points"] = [
        {"connections": c, "server": servers[c], "floor": floors[c], "model": {"batch": formed[c], "us_per_tile": raw[formed[c]]},
         **breakdown(servers[c], floors[c], raw[formed[c]])}
        for c in plan.connections
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    return served_stage(argv, "python -m bench.cpu", __doc__, results.RESULTS / "cpu.json", Plan(), QUICK, run)


if __name__ == "__main__":
    raise SystemExit(main())
