"""Where a busy server spends its time: py-spy samples of ``tessera serve`` under load, grouped
by step of the request path.

The server runs the 64-client single-tile sweep point (or a sheet per request, ``--sheet``)
while ``py-spy record`` samples every thread. Each sample is put in one group by the innermost
frame that names a step (decode body, hash, cache, batching, answer, ...); samples of threads
other than the event loop's are the model calls. The share of samples is turned into CPU
microseconds per tile with the server's CPU time over the same run.

    python -m bench.profile --out bench/results/profile.json    # needs py-spy (pip install py-spy)
"""

from __future__ import annotations

import argparse
import collections
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import load, results
from bench.bodies import Sheets
from bench.console import setup_logging
from bench.machine import describe
from tessera.testing.serve import tessera_server
from bench.service import Plan, SingleTiles, measured, server_env
from tessera.service.runtime.settings import DEFAULT_MODEL

logger = logging.getLogger(__name__)

# group -> (file, function) patterns; a None function matches any function of that file. A
# sample belongs to the group of its innermost matching frame.
GROUPS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "read body": (("service/http/front_door.py", "body"),),
    "decode body (npy, PNG)": (("service/pipeline/codecs.py", "tiles_from_npy"), ("service/pipeline/codecs.py", "tiles_from_image"),
                               ("service/pipeline/codecs.py", "tiles_from_json")),
    "hash tiles": (("service/pipeline/cache.py", "tile_hashes"),),
    "latent cache": (("service/pipeline/cache.py", None),),
    "batching (queue, wait, hand back)": (("service/batching/batcher.py", None), ("service/batching/queue.py", None),
                                          ("service/batching/admission.py", None)),
    "answer (npy, JSON)": (("service/pipeline/codecs.py", "npy_bytes"), ("service/pipeline/formats.py", None), ("starlette/responses.py", None)),
    "metrics": (("prometheus_client/", None), ("service/runtime/metrics.py", None)),
    "route and pipeline code": (("service/http/routes.py", None), ("service/pipeline/operations.py", None), ("service/http/dependencies.py", None),
                                ("service/http/front_door.py", None), ("service/runtime/lifecycle.py", None)),
}
FRAMEWORK = "HTTP and framework (uvicorn, Starlette, FastAPI)"
LOOP = "event loop and sockets"
MODEL = "model threads (batch collection, model calls)"


def find_py_spy() -> str | None:
    here = Path(sys.executable).with_name("py-spy")
    return str(here) if here.exists() else shutil.which("py-spy")


def classify(frames: list[str], main_thread: bool) -> str:
    """The group of one sample; ``frames`` root first, each "function (file:line)"."""
    if not main_thread:
        return MODEL
    for frame in reversed(frames):
        name, _, where = frame.partition(" (")
        parts = name.split(".")  # "Batcher.submit", "tile_hashes.<locals>.<listcomp>"
        for group, patterns in GROUPS.items():
            if any(file in where and (func is None or func in parts) for file, func in patterns):
                return group
    if any("run_asgi" in f for f in frames):
        return FRAMEWORK
    return LOOP


def read_samples(path: Path) -> collections.Counter:
    """py-spy ``--format raw`` output -> samples per group."""
    counts: collections.Counter = collections.Counter()
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        counts[classify(frames[1:], main_thread="MainThread" in frames[0])] += int(n)
    return counts


def run(checkpoint: Path, py_spy: str, clients: int, seconds: float, sheet: bool, threads: int, logs: Path, rate: int) -> dict:
    plan = Plan(threads=threads)
    with tessera_server(server_env(checkpoint, plan), logs / "serve-profile.log") as server, \
            tempfile.TemporaryDirectory(prefix="tessera-profile-") as tmp:
        raw = Path(tmp) / "samples.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.pid), "--rate", str(rate), "--format", "raw", "--threads",
             "--nonblocking", "--duration", str(int(seconds) + 2), "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        if sheet:
            sheets = Sheets(32, 32, count=int(seconds) + 1)
            point = measured(server, checkpoint.stem, load.closed_loop(server.url, sheets, concurrency=1, requests=int(seconds), warmup_requests=1))
        else:
            point = measured(server, checkpoint.stem, SingleTiles().closed(server.url, clients, seconds, warmup_s=1.0))
        _, err = spy.communicate(timeout=seconds + 30)
        if spy.returncode != 0 or not raw.exists():
            raise RuntimeError(f"py-spy failed ({spy.returncode}): {err.decode(errors='replace')[-500:]}")
        counts = read_samples(raw)
    total = sum(counts.values())
    cpu = point["cpu_s"]
    server_us_per_tile = 1e6 * (cpu["server_loop"] + cpu["server_model"]) / max(point["server"]["batched_tiles"], 1)
    groups = [
        {"group": group, "share": n / total, "us_per_tile": server_us_per_tile * n / total}
        for group, n in counts.most_common()
    ]
    for g in groups:
        logger.info("%-40s %5.1f%%  %7.1f us/tile", g["group"], 100 * g["share"], g["us_per_tile"])
    return {
        "machine": describe(), "model": checkpoint.stem, "case": "sheet" if sheet else f"{clients} clients",
        "threads": threads, "samples": total, "load": point, "groups": groups,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(f"checkpoints/{DEFAULT_MODEL}.safetensors"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--sheet", action="store_true", help="profile 1,024-tile sheets (one client) instead")
    parser.add_argument("--threads", type=int, default=1, help="TESSERA_TORCH_THREADS of the server")
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=results.RESULTS / "profile.json")
    parser.add_argument("--logs", type=Path, default=Path("bench/logs"))
    args = parser.parse_args(argv)
    setup_logging()
    py_spy = find_py_spy()
    if py_spy is None:
        logger.warning("py-spy not found (pip install py-spy); no profile taken")
        return 0
    results.save(args.out, run(args.checkpoint, py_spy, args.clients, args.seconds, args.sheet, args.threads, args.logs, args.rate))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
