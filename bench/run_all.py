"""``make bench``: every stage in turn, each in its own process, then ``docs/benchmarks.md``.

    python -m bench.run_all                # the standard set (under 10 minutes on 2 cores)
    python -m bench.run_all --quick        # seconds per stage: checks the harness only
    python -m bench.run_all --checkpoints /tmp/ckpt --results /tmp/results --doc /tmp/benchmarks.md

The machine should be otherwise idle: the load generator and the server share its cores, and
anything else running shows up as lower numbers. The 1-minute load average before the run is
recorded with the results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

from bench import report, results
from bench.console import setup_logging
from bench.machine import ROOT
from bench.procs import project_env
from tessera.service.runtime.settings import DEFAULT_MODEL

logger = logging.getLogger(__name__)


def stage_commands(args: argparse.Namespace, checkpoint: Path) -> dict[str, list[str]]:
    out = args.results
    quick = ["--quick"] if args.quick else []
    threads = str(args.threads)
    raw_threads = ",".join(map(str, sorted({args.threads, os.cpu_count() or 1})))  # the server's, and all cores
    return {
        "raw": ["bench.raw", "--checkpoints", str(args.checkpoints), "--threads", raw_threads, "--out", str(out / "raw.json"),
                *(["--batch-sizes", "1,16", "--min-run-time", "0.05"] if args.quick else [])],
        "path": ["bench.path", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "path.json"),
                 *(["--min-time", "0.02"] if args.quick else [])],
        "service": ["bench.service", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "service.json"), *quick],
        "cache": ["bench.cache", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "cache.json"), *quick],
        "repeat": ["bench.repeat", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "repeat.json"),
                   *(["--quick", "--repeats", "1"] if args.quick else [])],
        "profile": ["bench.profile", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "profile.json"),
                    *(["--seconds", "2", "--clients", "8"] if args.quick else [])],
        "cpu": ["bench.cpu", "--checkpoint", str(checkpoint), "--threads", threads, "--out", str(out / "cpu.json"), *quick],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run_all", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", type=Path, default=Path("checkpoints"), help="folder of the bundled checkpoints")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="the model the service stages serve")
    parser.add_argument("--threads", type=int, default=1, help="TESSERA_TORCH_THREADS of the server (and the raw reference)")
    parser.add_argument("--stages", default="raw,path,service,repeat,cache,profile,cpu", help="which stages to run, comma-separated")
    parser.add_argument("--quick", action="store_true", help="seconds per stage; the numbers mean nothing")
    parser.add_argument("--results", type=Path, default=results.RESULTS)
    parser.add_argument("--doc", type=Path, default=report.DOC)
    parser.add_argument("--plot", type=Path, default=report.PLOT)
    args = parser.parse_args(argv)
    setup_logging()

    from tessera.service.batching.registry import find_checkpoints

    checkpoint = find_checkpoints((args.checkpoints,)).get(args.model)
    if checkpoint is None:
        parser.error(f"no {args.model}.safetensors in {args.checkpoints}; pass --checkpoints or --model")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > 0.5:
        logger.warning("1-minute load average is %.2f: something else is running, numbers will be low", load)
    commands = stage_commands(args, checkpoint)
    wanted = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(commands))
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {list(commands)}")
    env = project_env()
    timings: dict[str, float] = {}
    start = time.monotonic()
    for stage in wanted:
        logger.info("stage %s", stage)
        begun = time.monotonic()
        subprocess.run([sys.executable, "-m", *commands[stage]], cwd=ROOT, env=env, check=True)
        timings[stage] = round(time.monotonic() - begun, 1)
    timings["total"] = round(time.monotonic() - start, 1)
    results.save(args.results / "run.json", {"stage_seconds": timings, "load_avg_1m_before": round(load, 2), "quick": args.quick})
    text = report.render(args.results, args.doc, args.plot)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(text)
    logger.info("stages took %s; wrote %s and %s", json.dumps(timings), args.doc, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
