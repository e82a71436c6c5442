"""Soak: a sustained mixed load against a real ``tessera serve`` (with Redis as its latent cache
when ``redis-server`` is installed), watching for errors and for memory that keeps growing.

    make soak                                   # 5 minutes -> bench/results/soak.json
    python -m bench.soak --duration 20          # a quick run of the harness

Closed loop, ``--clients`` clients; request ``i`` is of kind ``MIX[i % len(MIX)]``:

- ``encode_new``: one npy tile never sent before (a cache miss, stored);
- ``encode_batch_new``: 16 npy tiles never sent before;
- ``encode_cached``: one of a few PNG sheets sent over and over (cache hits);
- ``decode``: 4 latents to a PNG sheet.

Every ``--sample`` seconds the server's resident memory is read from its own ``/metrics``
(``process_resident_memory_bytes``). The run passes when no request failed and memory is
steady: the median RSS of the last quarter is within ``--max-growth`` of the second quarter's
(the first quarter is warm-up: caches and allocator pools fill). Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import io
import logging
import time
from pathlib import Path

import httpx
import numpy as np

from bench import load, results, scrape
from bench.bodies import NPY, PNG, TILE_BYTES, NpyTiles, Sheets, npy_header
from bench.console import setup_logging
from bench.machine import ROOT, describe
from tessera.testing.redis_server import redis_server
from tessera.testing.serve import ProcessStartError, tessera_server
from tessera.service.runtime.settings import DEFAULT_MODEL

logger = logging.getLogger(__name__)

MIX = ("encode_new", "encode_cached", "decode", "encode_new", "encode_batch_new", "encode_cached")
BATCH = 16  # tiles of an encode_batch_new request
DECODE = 4  # latents of a decode request


class Requests:
    """The request of each kind for index ``i``; new tiles never repeat across the run."""

    def __init__(self, latents: np.ndarray) -> None:
        self.single = NpyTiles(seed=11)
        self.batch_header = npy_header((BATCH, 32, 32, 3))
        self.noise = np.random.default_rng(12).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()
        self.sheets = Sheets(4, 4, count=6, seed=13)
        self.latents = latents

    def __call__(self, i: int) -> tuple[str, load.Request]:
        kind = MIX[i % len(MIX)]
        if kind == "encode_new":
            return kind, self.single(i)
        if kind == "encode_batch_new":
            offset = (i * 104729) % (len(self.noise) - BATCH * TILE_BYTES)  # a prime stride: distinct windows
            body = self.batch_header + self.noise[offset : offset + BATCH * TILE_BYTES]
            return kind, load.Request("/v1/encode", body, {"Content-Type": NPY, "Accept": NPY}, BATCH)
        if kind == "encode_cached":
            return kind, self.sheets.repeat(i % len(self.sheets.bodies))(i)
        start = (i * DECODE) % (len(self.latents) - DECODE)
        buffer = io.BytesIO()
        np.save(buffer, self.latents[start : start + DECODE])
        return kind, load.Request("/v1/decode", buffer.getvalue(), {"Content-Type": NPY, "Accept": PNG}, DECODE)


async def soak(url: str, clients: int, duration_s: float, sample_s: float) -> dict:
    """Run the mix for ``duration_s``; per-kind summaries and the memory timeline."""
    async with httpx.AsyncClient(base_url=url, timeout=60.0) as http:
        tiles = np.random.default_rng(14).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        np.save(buffer, tiles)
        answer = await http.post("/v1/encode", content=buffer.getvalue(), headers={"Content-Type": NPY, "Accept": NPY})
        answer.raise_for_status()
        latents = np.load(io.BytesIO(answer.content), allow_pickle=False)
    make = Requests(latents)
    shots: dict[str, list[load.Shot]] = collections.defaultdict(list)
    samples: list[dict] = []
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    end = start + duration_s
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as http:

        async def client_loop() -> None:
            while time.perf_counter() < end:
                kind, request = make(next(counter))
                sent = time.perf_counter()
                try:
                    response = await http.post(request.path, content=request.body, headers=request.headers)
                    status, cached = response.status_code, int(response.headers.get("x-tessera-cached", 0))
                except httpx.HTTPError:
                    status, cached = load.TRANSPORT_ERROR, 0
                shots[kind].append(load.Shot(sent, time.perf_counter() - sent, status, request.tiles, cached))

        async def sampler() -> None:
            while True:
                now = time.perf_counter()
                rss = await asyncio.to_thread(resident_bytes, url)
                done = sum(len(s) for s in shots.values())
                failed = sum(1 for s in shots.values() for shot in s if shot.status != 200)
                samples.append({"t_s": round(now - start, 1), "rss_mib": round(rss / 2**20, 1), "requests": done, "failed": failed})
                if now >= end:
                    return
                logger.info("%5.0f s: %d requests, %d failed, RSS %.1f MiB", now - start, done, failed, rss / 2**20)
                await asyncio.sleep(min(sample_s, max(0.0, end - time.perf_counter())))

        await asyncio.gather(sampler(), *(client_loop() for _ in range(clients)))
    elapsed = time.perf_counter() - start
    every = [shot for kind_shots in shots.values() for shot in kind_shots]
    return {
        "overall": load.summarize(every, elapsed),
        "kinds": {kind: load.summarize(kind_shots, elapsed) for kind, kind_shots in sorted(shots.items())},
        "samples": samples,
    }


def resident_bytes(url: str) -> float:
    samples = scrape.scrape(url)
    return samples[("process_resident_memory_bytes", frozenset())]


def memory_verdict(samples: list[dict], max_growth: float) -> dict:
    """Median RSS of the second and the last quarter of the run, their ratio, and the slope of
    a line through the second half (MiB per minute)."""
    rss = np.array([s["rss_mib"] for s in samples])
    t = np.array([s["t_s"] for s in samples])
    quarter = max(1, len(samples) // 4)
    second, last = float(np.median(rss[quarter : 2 * quarter])), float(np.median(rss[-quarter:]))
    half = t >= t[-1] / 2
    slope = float(np.polyfit(t[half] / 60, rss[half], 1)[0]) if half.sum() >= 2 else 0.0
    growth = last / second - 1
    return {
        "start_mib": float(rss[0]), "peak_mib": float(rss.max()), "end_mib": float(rss[-1]),
        "second_quarter_median_mib": second, "last_quarter_median_mib": last,
        "growth": round(growth, 4), "max_growth": max_growth, "slope_mib_per_min_second_half": round(slope, 2),
        "steady": bool(growth <= max_growth),
    }


def run(args: argparse.Namespace) -> dict:
    machine = describe()  # before the run: its load average is the machine's, not the soak's
    env = {"TESSERA_CHECKPOINTS": str(args.checkpoint), "TESSERA_TORCH_THREADS": str(args.threads), "TESSERA_DEVICE": "cpu"}
    with contextlib.ExitStack() as stack:
        redis_url = None
        if args.redis:
            try:
                redis_url = stack.enter_context(redis_server()).url
                env["TESSERA_REDIS_URL"] = redis_url
            except ProcessStartError as exc:
                logger.warning("soak without Redis (in-process cache): %s", exc)
        url = stack.enter_context(tessera_server(env, args.logs / "serve-soak.log")).url
        idle = resident_bytes(url) / 2**20
        logger.info("soak: %s for %.0f s, %d clients, cache %s; idle RSS %.1f MiB",
                    args.checkpoint.name, args.duration, args.clients, "redis" if redis_url else "memory", idle)
        measured = load.run(soak(url, args.clients, args.duration, args.sample))
    memory = memory_verdict(measured["samples"], args.max_growth)
    overall = measured["overall"]
    return {
        "machine": machine,
        "config": {"checkpoint": args.checkpoint.name, "duration_s": args.duration, "clients": args.clients,
                   "cache": "redis" if redis_url else "memory", "torch_threads": args.threads, "mix": list(MIX)},
        "idle_rss_mib": round(idle, 1),
        "requests": overall["requests"], "failed": overall["errors"], "statuses": overall["statuses"],
        "overall": overall, "kinds": measured["kinds"], "memory": memory, "samples": measured["samples"],
        "passed": overall["errors"] == 0 and memory["steady"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=ROOT / "checkpoints" / f"{DEFAULT_MODEL}.safetensors", help="the model to serve")
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load (default 300)")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients (default 8)")
    parser.add_argument("--sample", type=float, default=None, help="seconds between memory samples (default duration/60, at least 1)")
    parser.add_argument("--max-growth", type=float, default=0.10, help="allowed RSS growth, last quarter over second (default 0.10)")
    parser.add_argument("--threads", type=int, default=1, help="TESSERA_TORCH_THREADS of the server (default 1)")
    parser.add_argument("--no-redis", dest="redis", action="store_false", help="use the in-process cache instead of Redis")
    parser.add_argument("--out", type=Path, default=results.RESULTS / "soak.json")
    parser.add_argument("--logs", type=Path, default=ROOT / "bench" / "logs")
    args = parser.parse_args(argv)
    setup_logging()
    if not args.checkpoint.is_file():
        parser.error(f"no checkpoint {args.checkpoint}; train one or pass --checkpoint runs/dcae-s48/best.safetensors")
    args.sample = args.sample or max(1.0, args.duration / 60)
    data = run(args)
    results.save(args.out, data)
    memory = data["memory"]
    logger.info("soak %s: %d requests, %d failed; RSS %.1f -> %.1f MiB (peak %.1f, growth %+.1f%%); wrote %s",
                "passed" if data["passed"] else "FAILED", data["requests"], data["failed"], memory["start_mib"],
                memory["end_mib"], memory["peak_mib"], 100 * memory["growth"], args.out)
    return 0 if data["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
