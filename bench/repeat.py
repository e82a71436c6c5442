"""The headline numbers again, each in fresh processes: raw encode at the served batch size,
and the service's 64-client point, sheet and no-batching point.

Why: on the reference VM the model's speed depends on where a process's memory lands (about
one process in three ran dcae-s48 ~15% slower, the same code and input; with address-space
randomisation off the effect mostly went away). One process per number would make every
ratio a lottery, so the report takes the median of all runs for the raw model and the
service alike, and shows every run.

    python -m bench.repeat --repeats 2 --out bench/results/repeat.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import results
from bench.console import setup_logging
from bench.machine import ROOT, describe
from tessera.testing.serve import tessera_server
from bench.service import QUICK, Plan, SingleTiles, measured, server_env, sheet
from tessera.service.runtime.settings import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def raw_encode(checkpoint: Path, threads: int, batch: int, min_run_time: float) -> float:
    """Encode tiles/s of ``checkpoint`` at ``batch`` in a fresh ``bench.raw`` process, eager or
    traced, whichever is faster."""
    with tempfile.TemporaryDirectory(prefix="tessera-bench-") as tmp:
        out = Path(tmp) / "raw.json"
        cmd = [sys.executable, "-m", "bench.raw", "--checkpoints", str(checkpoint), "--threads", str(threads),
               "--batch-sizes", str(batch), "--ops", "encode", "--min-run-time", str(min_run_time), "--out", str(out)]
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
        return max(p["tiles_per_s"] for p in json.loads(out.read_text())["points"])  # the faster of eager and traced


def run(checkpoint: Path, plan: Plan, repeats: int, logs: Path, min_run_time: float) -> dict:
    model, c = checkpoint.stem, plan.headline_concurrency
    runs: dict[str, list[float]] = {"raw": [], "batching": [], "sheet": [], "no_batching": []}
    tiles = SingleTiles(seed=7)
    for k in range(repeats):
        runs["raw"].append(raw_encode(checkpoint, plan.threads, plan.max_batch_tiles, min_run_time))
        with tessera_server(server_env(checkpoint, plan), logs / "serve-repeat.log") as server:
            runs["batching"].append(measured(server, model, tiles.closed(server.url, c, plan.duration_s, plan.warmup_s))["tiles_per_s"])
            runs["sheet"].append(sheet(server, model, plan, seed=7000 + 100 * k)["tiles_per_s"])
        with tessera_server(server_env(checkpoint, plan, max_batch_tiles=1), logs / "serve-repeat.log") as server:
            runs["no_batching"].append(measured(server, model, tiles.closed(server.url, c, plan.duration_s, plan.warmup_s))["tiles_per_s"])
        logger.info("repeat %d: %s", k + 1, {name: round(values[-1]) for name, values in runs.items()})
    return {"machine": describe(), "model": model, "plan": dataclasses.asdict(plan), "repeats": repeats, "runs": runs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.repeat", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(f"checkpoints/{DEFAULT_MODEL}.safetensors"))
    parser.add_argument("--threads", type=int, default=Plan.threads, help="TESSERA_TORCH_THREADS of the server")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds of raw timing per repeat")
    parser.add_argument("--quick", action="store_true", help="a few seconds, to check the harness")
    parser.add_argument("--out", type=Path, default=results.RESULTS / "repeat.json")
    parser.add_argument("--logs", type=Path, default=Path("bench/logs"))
    args = parser.parse_args(argv)
    setup_logging()
    plan = dataclasses.replace(QUICK if args.quick else Plan(), threads=args.threads)
    results.save(args.out, run(args.checkpoint, plan, args.repeats, args.logs, 0.1 if args.quick else args.min_run_time))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
