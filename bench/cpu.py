"""CPU per request, in one run: the server, its model at the batch size it formed, and the bare
framework. What is left is what the service itself spends.

For single-tile npy encodes from wrk (``bench.wrk``; the httpx generator without it) at 1, 16
and 64 connections, every tile distinct:

- *server*: the CPU time of the whole ``tessera serve`` process (every thread, from
  ``/proc/<pid>/stat``) over the measured window, per tile answered. Process CPU time is what
  this machine's hypervisor steal does not inflate the way it inflates wall time;
- *model*: the raw model call the server makes (``tessera.service.batching.graphs``, traced, the same torch
  threads), CPU time of this process per tile, at the server's mean batch size for that
  connection count (from its ``tessera_batch_size_tiles`` histogram), timed right after that
  connection count's window while the server idles: the machine's speed drifts by tens of per
  cent over minutes, and both sides of the ratio should see the same machine;
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
from tessera.testing.serve import ServerProcess, tessera_server

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


class RawModel:
    """The server's traced encode call in this process, timed in CPU microseconds per tile (the
    process's CPU: torch's pool too). Each point's model is timed right after that point, while
    the server idles, so that the machine's drift between them stays out of the ratio."""

    def __init__(self, checkpoint: Path, threads: int, max_batch: int) -> None:
        import numpy as np
        import torch

        from tessera import model
        from tessera.service.batching.graphs import make_calls
        from tessera.service.runtime.malloc_tuning import keep_freed_memory

        keep_freed_memory()  # as the server does
        torch.set_num_threads(threads)
        module, _ = model.load_checkpoint(checkpoint, device="cpu", dtype=torch.float32)
        self.name = checkpoint.stem
        self.encode, _, self.graph = make_calls(module.eval(), "cpu", torch.float32, "trace", checkpoint.stem)
        self.rng = np.random.default_rng(0)
        for n in range(1, max_batch + 1):  # the server's warm-up: every batch size once
            self.encode(self.rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8))

    def us_per_tile(self, batch: int, min_cpu_s: float, pause_s: float = 0.0) -> float:
        """At ``batch`` tiles a call, back to back or each call after a ``pause_s`` sleep (as a lone
        client's requests find the model)."""
        tiles = self.rng.integers(0, 256, (batch, 32, 32, 3), dtype="uint8")
        calls, cpu = 0, 0.0
        while calls < 3 or cpu < min_cpu_s:
            if pause_s:
                time.sleep(pause_s)
            start = time.process_time()
            self.encode(tiles)
            cpu += time.process_time() - start
            calls += 1
        us = 1e6 * cpu / (calls * batch)
        logger.info("raw %s (%s) batch %d%s: %.1f us CPU per tile", self.name, self.graph, batch,
                    f" after {1e3 * pause_s:.2f} ms pauses" if pause_s else "", us)
        return us


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
    raw = RawModel(checkpoint, plan.threads, plan.max_batch_tiles)
    servers, formed, model_us = {}, {}, {}
    with tessera_server(env, logs / "serve-cpu.log") as server:
        for c in plan.connections:
            servers[c] = cpu_point(server, tiles, c, plan, model)
            formed[c] = max(1, round(servers[c]["server"]["mean_batch_tiles"] or 1))
            model_us[c] = raw.us_per_tile(formed[c], plan.raw_min_s)
            if c == min(plan.connections):
                pause = model_thread_pause_s(servers[c])
                back_to_back = model_us[c] if formed[c] == 1 else raw.us_per_tile(1, plan.raw_min_s)
                out["model_after_pause"] = {"pause_s": pause, "batch": 1, "connections": c, "back_to_back_us": back_to_back,
                                            "us_per_tile": raw.us_per_tile(1, plan.raw_min_s, pause)}
    out["points"] = [
        {"connections": c, "server": servers[c], "floor": floors[c], "model": {"batch": formed[c], "us_per_tile": model_us[c]},
         **breakdown(servers[c], floors[c], model_us[c])}
        for c in plan.connections
    ]
    return out


def main(argv: list[str] | None = None) -> int:
    return served_stage(argv, "python -m bench.cpu", __doc__, results.RESULTS / "cpu.json", Plan(), QUICK, run)


if __name__ == "__main__":
    raise SystemExit(main())
