"""``make gpu-check``: the GPU path proven in one prepared run that needs no one watching.

On a CUDA machine, with no network and within 9 minutes, four stages in order, each in a
process of its own with its own time budget (a stage that fails or runs out of time is recorded
and the next one runs all the same):

1. ``tests``: the CUDA tests (``pytest -m gpu tests/gpu``): encode and decode on CUDA against the
   CPU in fp32, TF32, fp16 and bf16, the traced graphs on CUDA against eager, and ``tessera serve``
   on CUDA round-tripping a sheet;
2. ``raw``: encode/decode tiles/s of ``dcae-04`` (random weights) and the bundled models in
   fp32/fp16/bf16 at batch 64 to 2048: eager, channels-last, the service's traced call and
   ``torch.compile`` (its compile time apart), with the GPU memory peak of each point;
3. ``service``: ``tessera serve`` on the GPU with ``dcae-04`` in bf16: 1,024-tile sheets one at a
   time, 8 clients sending 256-tile sheets, 256 single-tile wrk connections; tiles/s against the
   raw call at the batch size the server formed, and the server's CPU per request (/proc);
4. ``train``: ``tessera train`` of ``dcae-04`` (bf16 autocast) on ``data/dcss`` for about 2.5
   minutes: inputs/s and the time 1M inputs would take (the original experiment: 78 minutes); with more than one
   GPU, again under ``torchrun --nproc_per_node=<gpus>``.

Each stage writes ``<stage>.json`` as it goes; then ``gpu-check.json`` (everything),
``gpu-check.md`` (a short summary) and ``gpu-check.log`` (the stages' output) complete the
folder: ``--out``, else ``$OUT`` when set, else ``bench/results/gpu/`` (a dry run: a new
temporary folder). The exit code is 0 when every stage passed.

    python -m bench.gpu_check                          # on the GPU machine (make gpu-check)
    python -m bench.gpu_check --dry-run                # every stage, tiny, on the CPU (make gpu-check DRY=1)
    python -m bench.gpu_check --stages raw --budget raw=400   # one stage again, with more time

The dry run swaps ``dcae-04`` for ``dcae-t48``, batch sizes for 2 and 8, ``data/dcss`` for a
data set of synthetic sheets, and torch.compile's inductor for its ``eager`` backend (inductor's
C++ build takes minutes on a CPU); the CUDA tests are collected and skip. Its numbers mean
nothing: it proves the script runs, so it cannot rot between the times a GPU is at hand.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import importlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import results
from bench.console import setup_logging
from bench.machine import ROOT, describe, describe_cuda
from bench.procs import project_env, run_group
from tessera.testing.serve import TesseraServer, tessera_command

logger = logging.getLogger(__name__)

STAGES = ("tests", "raw", "service", "train")
WALL_LIMIT_S = 9 * 60  # the whole GPU run, start-up and summary included
ORIGINAL_1M_MINUTES = 78.0  # the original experiment's dcae-04: one million training inputs on its GPU
TESTS_DEADLINE_ENV = "TESSERA_GPU_TESTS_DEADLINE"  # read by tests/gpu/conftest.py
NEEDS = {  # what each stage imports (the first module missing is reported): a GPU machine may have a Python of its own
    "tests": ("pytest", "pytest_timeout", "tessera.client", "tessera.service.http.app"),
    "raw": ("tessera.model", "tessera.service.batching.graphs"),
    "service": ("tessera.service.http.app", "bench.service"),
    "train": ("tessera.training.train", "torchmetrics"),
}


@dataclass(frozen=True)
class Plan:
    """What one run does; ``GPU`` and ``DRY`` below are the two there are."""

    dry_run: bool
    device: str  # where the models run: cuda, or cpu for the dry run
    big_model: str  # the preset measured with random weights (dcae-04)
    budgets_s: dict[str, float]  # each stage's process is stopped after this
    threads: int | None  # torch intra-op threads of the stages and the server; None: torch's default
    test_timeout_s: float  # one CUDA test at most (pytest-timeout)
    raw_dtypes: tuple[str, ...]  # of the big model; the first one is measured first
    raw_batch_sizes: tuple[int, ...]
    raw_min_run_time: float  # seconds of timing per point
    bundled_dtypes: tuple[str, ...]
    compile_dtypes: tuple[str, ...]  # torch.compile of the big model, after every eager setting
    compile_layouts: tuple[bool, ...]  # channels_last or not
    compile_batch_sizes: tuple[int, ...]  # each one a compilation of its own
    compile_backend: str
    compile_min_s: float  # a compiled setting starts only with this much of the stage's time left
    serve_dtype: str  # TESSERA_CUDA_DTYPE of the server
    max_batch_tiles: int  # TESSERA_MAX_BATCH_TILES: docker-compose.gpu.yml's 256
    sheet_grid: tuple[int, int]  # tiles of the big sheets: 32 x 32 = 1,024
    sheet_requests: int  # measured, one at a time, after one warm-up sheet
    clients: int
    client_grid: tuple[int, int]  # 16 x 16 = 256 tiles per client sheet
    client_requests: int  # per client, after one warm-up sheet each
    wrk_connections: int
    wrk_warmup_s: float
    wrk_duration_s: float
    train_batch: int  # per process (the original experiment's 64)
    train_max_inputs: int  # the schedule's span, and the cap of --stop-after
    train_window_s: float  # training time of one run (all runs share it when there are several)
    train_warmup_s: float  # train.csv rows before this are left out of the rate (cuDNN autotuning)
    train_log_every: int
    train_reserve_s: float  # after the window: validation and checkpoints
    data: str = "data/dcss"  # the GPU run's training set (`make data`, carried to the GPU machine)


GPU = Plan(
    dry_run=False, device="cuda", big_model="dcae-04",
    budgets_s={"tests": 85, "raw": 135, "service": 95, "train": 195}, threads=None, test_timeout_s=60,
    raw_dtypes=("bfloat16", "float16", "float32"), raw_batch_sizes=(64, 256, 1024, 2048), raw_min_run_time=0.1,
    bundled_dtypes=("bfloat16", "float16", "float32"), compile_dtypes=("bfloat16",), compile_layouts=(False, True),
    compile_batch_sizes=(256, 2048), compile_backend="inductor", compile_min_s=30,
    serve_dtype="bf16", max_batch_tiles=256, sheet_grid=(32, 32), sheet_requests=6, clients=8, client_grid=(16, 16),
    client_requests=4, wrk_connections=256, wrk_warmup_s=2, wrk_duration_s=6,
    train_batch=64, train_max_inputs=1_000_000, train_window_s=145, train_warmup_s=15, train_log_every=10,
    train_reserve_s=30,
)
DRY = Plan(
    dry_run=True, device="cpu", big_model="dcae-t48",
    budgets_s={"tests": 150, "raw": 150, "service": 150, "train": 150}, threads=1, test_timeout_s=60,
    raw_dtypes=("float32", "bfloat16"), raw_batch_sizes=(2, 8), raw_min_run_time=0.005,
    bundled_dtypes=("float32",), compile_dtypes=("float32",), compile_layouts=(False,), compile_batch_sizes=(2,),
    compile_backend="eager", compile_min_s=0,
    serve_dtype="bf16", max_batch_tiles=16, sheet_grid=(4, 4), sheet_requests=2, clients=8, client_grid=(2, 2),
    client_requests=1, wrk_connections=4, wrk_warmup_s=1, wrk_duration_s=1,
    train_batch=16, train_max_inputs=100_000, train_window_s=2, train_warmup_s=0, train_log_every=2,
    train_reserve_s=20,
)
STOP_GRACE_S = 5  # a stage past its budget gets SIGTERM, then SIGKILL this much later
assert sum(GPU.budgets_s.values()) + len(STAGES) * STOP_GRACE_S <= WALL_LIMIT_S - 5, "no time left for start-up and summary"


# ---- stages: each runs in its own process (`--stage NAME`) and fills in its results dict


@dataclass
class Stage:
    """One stage's process: where it writes and until when it may start new work."""

    name: str
    plan: Plan
    out: Path
    work: Path  # scratch shared by the stages (checkpoints, data, logs), deleted at the end
    deadline: float  # time.monotonic() by which the stage should be done
    data_path: Path | None  # --data; None: data/dcss, or synthetic sheets in a dry run
    data: dict = field(default_factory=dict)

    def save(self) -> None:
        results.save(self.out / f"{self.name}.json", self.data)

    def left_s(self) -> float:
        return self.deadline - time.monotonic()


def big_checkpoint(stage: Stage) -> Path:
    """The big preset with random weights (seed 0) in ``work/models``, written once per run."""
    path = stage.work / "models" / f"{stage.plan.big_model}.safetensors"
    if not path.exists():
        import torch

        from tessera import model

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(0)
        model.save_checkpoint(model.build(stage.plan.big_model), path, {"weights": "random (seed 0), written by bench.gpu_check"})
    return path


def run_tests(stage: Stage) -> None:
    """The gpu-marked tests in a pytest process, read back from its JUnit report. Tests that would
    start after the stage's deadline skip (tests/gpu/conftest.py), so the report gets written."""
    import xml.etree.ElementTree as ElementTree

    report = stage.work / "tests.xml"
    cmd = [sys.executable, "-m", "pytest", "tests/gpu", "-m", "gpu", "-v", "-p", "no:cacheprovider",
           f"--junitxml={report}", f"--timeout={stage.plan.test_timeout_s:g}"]
    stage.data["command"] = " ".join(cmd[2:])
    env = {**os.environ, TESTS_DEADLINE_ENV: str(time.time() + stage.left_s() - 5)}
    try:
        stage.data["exit_code"] = subprocess.run(cmd, cwd=ROOT, env=env, timeout=max(1.0, stage.left_s())).returncode
    except subprocess.TimeoutExpired:
        stage.data["exit_code"] = None
    tests = []
    if report.exists():
        for case in ElementTree.parse(report).iter("testcase"):
            outcome, message = "passed", None
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[child.tag]
                    text = (child.get("message") or child.text or "").strip()
                    message = text.splitlines()[0][:300] if text else ""
            name = f"{case.get('classname')}::{case.get('name')}"  # tests.gpu.test_cuda::test_...[params]
            tests.append({"name": name, "outcome": outcome, "seconds": float(case.get("time") or 0), "message": message})
    counts = collections.Counter(t["outcome"] for t in tests)
    stage.data.update(tests=tests, counts={k: counts.get(k, 0) for k in ("passed", "failed", "error", "skipped")})
    if not tests:
        stage.data["problem"] = f"pytest wrote no report (exit code {stage.data['exit_code']}); see gpu-check.log"
    # the dry run has no CUDA: every test skips, and that is the pass
    ran = counts["passed"] > 0 or stage.plan.dry_run
    stage.data["passed"] = bool(tests) and ran and not counts["failed"] and not counts["error"]


@dataclass(frozen=True)
class Setting:
    model: str
    dtype: str
    channels_last: bool
    graphs: tuple[str, ...]

    @property
    def label(self) -> str:
        return f"{self.model} {self.dtype} {'channels_last' if self.channels_last else 'contiguous'} {'+'.join(self.graphs)}"


def raw_settings(plan: Plan, bundled: list[str]) -> list[Setting]:
    """Most wanted first, in case the budget runs out: the big model in its first dtype, its
    other dtypes, the bundled models, then the compiled forms (their compile time is unknown)."""
    def eager(model: str, dtype: str) -> list[Setting]:
        return [Setting(model, dtype, False, ("eager", "trace")), Setting(model, dtype, True, ("eager",))]

    settings = [s for dtype in plan.raw_dtypes for s in eager(plan.big_model, dtype)]
    settings += [s for name in bundled for dtype in plan.bundled_dtypes for s in eager(name, dtype)]
    settings += [Setting(plan.big_model, dtype, cl, ("compile",)) for dtype in plan.compile_dtypes for cl in plan.compile_layouts]
    return settings


def run_raw(stage: Stage) -> None:
    """bench.raw's measurements, setting by setting; a setting that fails is recorded and the
    next one runs."""
    import torch

    from bench import raw
    from tessera.service.runtime.malloc_tuning import keep_freed_memory
    from tessera.service.batching.registry import find_checkpoints

    keep_freed_memory()
    plan = stage.plan
    bundled = find_checkpoints((ROOT / "checkpoints",))
    files = {plan.big_model: big_checkpoint(stage), **bundled}
    threads = plan.threads or torch.get_num_threads()
    if plan.device == "cuda":  # torch's defaults, which the service keeps: fp32 rows are TF32 convolutions
        stage.data["cudnn"] = {"allow_tf32": torch.backends.cudnn.allow_tf32, "benchmark": torch.backends.cudnn.benchmark}
    stage.data.update(models={k: str(v) for k, v in files.items()}, batch_sizes=list(plan.raw_batch_sizes),
                      compile={"backend": plan.compile_backend, "dynamic": False, "batch_sizes": list(plan.compile_batch_sizes)},
                      settings=[], points=[])
    points = stage.data["points"]

    def on_row(row: dict) -> None:
        points.append(row)
        stage.save()

    for setting in raw_settings(plan, list(bundled)):
        entry = {"setting": setting.label, **dataclasses.asdict(setting), "points": 0}
        stage.data["settings"].append(entry)
        needed = plan.compile_min_s if "compile" in setting.graphs else 0
        if stage.left_s() <= needed:
            entry["skipped"] = "the stage's time budget was spent"
            continue
        before, begun = len(points), time.monotonic()
        try:
            raw.measure_model(
                setting.model, files[setting.model], device=plan.device, dtype_name=setting.dtype, threads=threads,
                batch_sizes=plan.compile_batch_sizes if "compile" in setting.graphs else plan.raw_batch_sizes,
                min_run_time=plan.raw_min_run_time, graphs=setting.graphs,
                channels_last=setting.channels_last, compile_backend=plan.compile_backend, deadline=stage.deadline,
                on_row=on_row,
            )
        except Exception as exc:  # an unsupported dtype, a compiler crash, out of memory: recorded, next setting
            logger.exception("raw: %s failed", setting.label)
            entry["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:500]
        entry.update(points=len(points) - before, seconds=round(time.monotonic() - begun, 1))
        if "trace" in setting.graphs and "error" not in entry and not any(p["graph"] == "trace" for p in points[before:]):
            entry["note"] = "no trace rows: the traced graph failed its check against eager, so the service runs eager (log)"
        if stage.left_s() <= 0:
            entry["cut_short"] = "the stage's time budget ran out during this setting"
        if "compile" in setting.graphs:
            torch._dynamo.reset()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        stage.save()
    errors = [s for s in stage.data["settings"] if "error" in s]
    stage.data["passed"] = bool(points) and not errors
    if errors:
        stage.data["problem"] = f"{len(errors)} setting(s) failed: " + "; ".join(f"{s['setting']}: {s['error']}" for s in errors)


def run_service(stage: Stage) -> None:
    """A real `tessera serve` on the big model, loaded by bench.service's machinery."""
    plan = stage.plan
    runs = service_runs(plan)
    path = big_checkpoint(stage)
    name = path.stem
    env = service_env(plan, path)
    parts: dict[str, dict] = {}
    stage.data.update(model=name, server_env=env, parts=parts)
    serve_parts(stage, env, name, runs, parts)
    done = {k: p for k, p in parts.items() if p.get("ok")}
    add_server_cpu(done)
    stage.save()
    compare_with_raw(stage, name, path, done)
    bad = [f"{k}: {_part_problem(p)}" for k, p in parts.items() if _part_problem(p)]
    stage.data["passed"] = bool(done) and not bad
    if bad:
        stage.data["problem"] = "; ".join(bad)


def service_runs(plan: Plan) -> dict[str, tuple[str, Callable]]:
    """The service stage's parts: what each one sends, and its load as a function of the server's
    URL (None for wrk's, which ``measure_wrk`` runs)."""
    from bench import load
    from bench.bodies import Sheets

    sheet_tiles, client_tiles = plan.sheet_grid[0] * plan.sheet_grid[1], plan.client_grid[0] * plan.client_grid[1]
    return {
        "sheet": (f"{sheet_tiles:,}-tile sheets, one request at a time", lambda url: load.closed_loop(
            url, Sheets(*plan.sheet_grid, count=plan.sheet_requests + 1, seed=1000), concurrency=1,
            requests=plan.sheet_requests, warmup_requests=1)),
        "clients": (f"{plan.clients} clients sending {client_tiles}-tile sheets", lambda url: load.closed_loop(
            url, Sheets(*plan.client_grid, count=plan.clients * (plan.client_requests + 1), seed=2000),
            concurrency=plan.clients, requests=plan.clients * plan.client_requests, warmup_requests=plan.clients)),
        "wrk": (f"{plan.wrk_connections} wrk connections sending single tiles", None),
    }


def service_env(plan: Plan, path: Path) -> dict[str, str]:
    """The server's environment: ``path``'s folder of checkpoints on the plan's device."""
    return {
        "TESSERA_CHECKPOINTS": str(path.parent), "TESSERA_DEVICE": plan.device, "TESSERA_CUDA_DTYPE": plan.serve_dtype,
        "TESSERA_MAX_BATCH_TILES": str(plan.max_batch_tiles),
        "TESSERA_MAX_REQUESTS_IN_FLIGHT": str(max(256, 2 * plan.wrk_connections)),
        **({"TESSERA_TORCH_THREADS": str(plan.threads)} if plan.threads else {}),
    }


def serve_parts(
    stage: Stage, env: dict[str, str], name: str, runs: dict[str, tuple[str, Callable]], parts: dict[str, dict]
) -> None:
    """Start the server with ``env`` and measure each of ``runs`` against it into ``parts``; a part
    that fails is recorded and the next one runs."""
    import httpx

    from bench.service import measured
    from tessera.testing.serve import tessera_server

    begun = time.monotonic()
    with tessera_server(env, stage.work / "service-serve.log", ready_timeout_s=max(10.0, stage.left_s() - 20)) as server:
        stage.data["ready_s"] = round(time.monotonic() - begun, 2)  # load, trace, warm-up at every batch size
        stage.data["served"] = httpx.get(f"{server.url}/v1/models", timeout=10).json()["models"][0]
        for key, (what, work) in runs.items():
            part = parts.setdefault(key, {"what": what})
            if stage.left_s() < 15:
                part["skipped"] = "the stage's time budget was spent"
                continue
            try:
                if key != "wrk":
                    part.update(measured(server, name, work(server.url)))
                elif not measure_wrk(stage.plan, server, name, part):
                    continue
            except Exception as exc:
                logger.exception("service: %s failed", key)
                part["error"] = f"{type(exc).__name__}: {exc}"[:500]
            stage.save()


def measure_wrk(plan: Plan, server: TesseraServer, name: str, part: dict) -> bool:
    """wrk's single-tile connections, a warm-up run and then the measured one, into ``part``; False
    (and why in ``part``) when wrk is not installed."""
    from bench import wrk
    from bench.service import measured

    if not wrk.available():
        part["skipped"] = "wrk not found (Debian package wrk): this part was not run"
        return False
    tiles = wrk.WrkTiles(seed=3)

    def single_tiles(url=server.url, tiles=tiles) -> dict:
        tiles.run(url, concurrency=plan.wrk_connections, duration_s=plan.wrk_warmup_s)
        return tiles.run(url, concurrency=plan.wrk_connections, duration_s=plan.wrk_duration_s)

    try:
        part.update(measured(server, name, single_tiles))
    finally:
        tiles.close()
    return True


def add_server_cpu(done: dict[str, dict]) -> None:
    """The server's CPU per request and per tile of each measured part, where its threads were told apart."""
    for part in done.values():
        cpu = part["cpu_s"]
        if "server_loop" in cpu:  # from /proc/<pid>/task: the event loop, and every other thread
            server_s = cpu["server_loop"] + cpu["server_model"]
            part["server_cpu_ms_per_request"] = 1000 * server_s / part["ok"]
            part["server_cpu_us_per_tile"] = 1e6 * server_s / max(1, part["tiles"])


def compare_with_raw(stage: Stage, name: str, path: Path, done: dict[str, dict]) -> None:
    """The call the server makes (and plain eager), alone, at the batch sizes it formed: its rows in
    ``stage.data["raw"]``, the best of them at each part's batch in the part, with the ratio."""
    from bench import raw

    plan = stage.plan
    formed = {k: max(1, round(p["server"]["mean_batch_tiles"] or 1)) for k, p in done.items()}
    if not formed or stage.left_s() <= 5:
        return
    rows = raw.measure_model(
        name, path, device=plan.device, dtype_name=stage.data["served"]["dtype"],
        threads=plan.threads or _torch_threads(), batch_sizes=sorted(set(formed.values())),
        min_run_time=plan.raw_min_run_time, ops=("encode",), graphs=("eager", "trace"), deadline=stage.deadline,
    )
    stage.data["raw"] = rows
    for key, part in done.items():
        best = max((r for r in rows if r["batch"] == formed[key]), key=lambda r: r["tiles_per_s"], default=None)
        if best is not None:
            part["raw"] = {"batch": best["batch"], "graph": best["graph"], "tiles_per_s": best["tiles_per_s"]}
            part["vs_raw"] = part["tiles_per_s"] / best["tiles_per_s"]


def _part_problem(part: dict) -> str | None:
    """Why a service part does not pass, or None. wrk missing is said in the results and is no
    failure (the issue lets that part go)."""
    if part.get("skipped", "").startswith("wrk not found"):
        return None
    if part.get("error") or part.get("skipped"):
        return part.get("error") or part["skipped"]
    if not part.get("ok") or part.get("errors"):
        return f"{part.get('ok', 0)} answered, {part.get('errors', 0)} errors"
    return None


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def dry_data(work: Path) -> Path:
    """The dry run's stand-in for data/dcss: a data set cut from two synthetic noise sheets."""
    from bench.bodies import sheet_png
    from tessera.training.data import build_folder

    sheets, out = work / "sheets", work / "data"
    sheets.mkdir(parents=True, exist_ok=True)
    for k in range(2):
        (sheets / f"sheet{k}.png").write_bytes(sheet_png(8, 8, seed=k))
    build_folder(sheets, out)
    return out


def train_rows(path: Path) -> list[dict]:
    """The whole rows of a run's train.csv so far (the last line may still be half written)."""
    from tessera.training.logs import read_csv

    rows = []
    for row in read_csv(path) if path.exists() else []:
        try:
            rows.append({"step": int(row["step"]), "inputs": int(row["inputs"]), "elapsed_s": float(row["elapsed_s"])})
        except (KeyError, TypeError, ValueError):
            pass
    return rows


def train_rate(rows: list[dict], warmup_s: float) -> dict:
    """Inputs/s between the first row past ``warmup_s`` of training and the last one."""
    if not rows:
        return {"inputs": 0, "inputs_per_s": None}
    start = next((r for r in rows if r["elapsed_s"] >= rows[0]["elapsed_s"] + warmup_s and r is not rows[-1]), rows[0])
    last = rows[-1]
    span = last["elapsed_s"] - start["elapsed_s"]
    rate = (last["inputs"] - start["inputs"]) / span if span > 0 else None
    return {
        "inputs": last["inputs"], "train_s": last["elapsed_s"], "rate_from_s": start["elapsed_s"], "inputs_per_s": rate,
        "projected_1m_min": 1e6 / rate / 60 if rate else None, "original_1m_min": ORIGINAL_1M_MINUTES,
    }


def train_env(plan: Plan) -> dict[str, str]:
    return project_env(**({"OMP_NUM_THREADS": str(plan.threads)} if plan.threads else {}))


def train_command(plan: Plan, data: Path, out: Path, batch: int, stop_after: int, processes: int = 0) -> list[str]:
    """`tessera train` of the big model, or with ``processes`` the same under torchrun."""
    arguments = [
        "--model", plan.big_model, "--data", str(data), "--out", str(out), "--device", plan.device,
        "--batch-size", str(batch), "--max-inputs", str(plan.train_max_inputs), "--stop-after", str(stop_after),
        "--eval-every", str(plan.train_max_inputs), "--log-every", str(plan.train_log_every),
        "--checkpoint-dtype", "bfloat16", "--no-tensorboard", "--no-progress",
        *(["--threads", str(plan.threads)] if plan.threads else []),
    ]
    if processes:
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                "-m", "tessera.training.train", *arguments]
    return [*tessera_command(), "train", *arguments]


def train_once(stage: Stage, kind: str, cmd: list[str], run_dir: Path, window_s: float, env: dict[str, str]) -> dict:
    """One training run, stopped as `tessera train` is meant to be stopped: by --stop-after, or
    by SIGINT once ``window_s`` of training is in train.csv (it then validates, saves and exits
    130). Killed only when that does not end it by the stage's deadline."""
    log = stage.work / f"train-{kind}.log"
    entry = {"kind": kind, "command": " ".join(cmd), "window_s": window_s}
    stop_by = stage.deadline - stage.plan.train_reserve_s
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    signalled = False
    while process.poll() is None:
        rows = train_rows(run_dir / "train.csv")
        trained = rows[-1]["elapsed_s"] - rows[0]["elapsed_s"] if rows else 0.0
        if not signalled and (trained >= window_s or time.monotonic() > stop_by):
            process.send_signal(signal.SIGINT)
            signalled = True
        if time.monotonic() > stage.deadline:
            process.kill()
            entry["problem"] = "killed at the stage's deadline"
        time.sleep(0.25)
    entry["exit_code"] = process.wait()
    entry["signalled"] = signalled
    entry.update(train_rate(train_rows(run_dir / "train.csv"), stage.plan.train_warmup_s))
    with contextlib.suppress(OSError, ValueError):
        record = json.loads((run_dir / "run.json").read_text())
        entry.update({k: record.get(k) for k in ("world_size", "device", "precision", "batch_size", "spec")})
    text = log.read_text(errors="replace") if log.exists() else ""
    entry["stopped"] = how_it_stopped(entry["exit_code"], signalled, text)
    if entry["stopped"] is None and "problem" not in entry:
        tail = text.strip().splitlines()[-1:]
        entry["problem"] = f"exit code {entry['exit_code']}: {tail[0][:300] if tail else ''}"
    return entry


def how_it_stopped(exit_code: int, signalled: bool, log: str) -> str | None:
    """``"itself"`` (the end of the schedule or --stop-after), ``"SIGINT"`` (it saved and stopped
    when asked), or None when it failed. `tessera train` exits 130 when stopped by SIGINT, but
    torchrun passes the signal on to its processes and then exits 1 itself, whatever they did:
    there, a clean stop is rank 0's own report of it."""
    if exit_code == 0:
        return "itself"
    if signalled and (exit_code == 130 or (exit_code == 1 and re.search(r"^stopped at [\d,]+ inputs", log, re.MULTILINE))):
        return "SIGINT"
    return None


def run_train(stage: Stage) -> None:
    import torch

    plan = stage.plan
    data = stage.data_path or (dry_data(stage.work) if plan.dry_run else ROOT / plan.data)
    gpus = torch.cuda.device_count() if plan.device == "cuda" else 0
    processes = gpus if gpus > 1 else (1 if plan.dry_run else 0)  # the dry run tries torchrun with one process
    window = plan.train_window_s / (2 if processes else 1)
    runs: list[dict] = []
    stage.data.update(model=plan.big_model, data=str(data), gpus=gpus, warmup_s=plan.train_warmup_s, runs=runs)
    if not (Path(data) / "manifest.json").exists():
        stage.data["problem"] = (f"no data set in {data}: build it on the CPU side (make data, i.e. tessera data dcss "
                                 f"--out {data}) and carry it to the GPU machine")
        stage.data["passed"] = False
        return
    env = train_env(plan)
    single = stage.work / "train" / "single"
    runs.append(train_once(stage, "single", train_command(plan, data, single, plan.train_batch, plan.train_max_inputs),
                           single, window, env))
    stage.save()
    rate = runs[0].get("inputs_per_s")
    if processes and rate:
        # each process its own batch of train_batch; --stop-after from the one-process rate, so
        # the run ends by itself near the window (SIGINT remains the fallback), and never before
        # train.csv has a few rows to measure a rate with
        batch = plan.train_batch * processes
        stop_after = max(batch * plan.train_log_every * 4, int(rate * processes * window * 0.8) // batch * batch)
        ddp = stage.work / "train" / "torchrun"
        runs.append(train_once(stage, "torchrun", train_command(plan, data, ddp, batch, stop_after, processes), ddp, window * 1.5, env))
        runs[-1]["speedup"] = runs[-1]["inputs_per_s"] / rate if runs[-1].get("inputs_per_s") else None
    problems = [f"{r['kind']}: {r['problem']}" for r in runs if r.get("problem")]
    problems += [f"{r['kind']}: no inputs/s measured" for r in runs if not r.get("inputs_per_s")]
    stage.data["passed"] = not problems
    if problems:
        stage.data["problem"] = "; ".join(problems)


RUNNERS: dict[str, Callable[[Stage], None]] = {"tests": run_tests, "raw": run_raw, "service": run_service, "train": run_train}


def stage_main(args: argparse.Namespace, plan: Plan) -> int:
    """``--stage NAME``: one stage, in this process (started by ``orchestrate``)."""
    deadline = time.monotonic() + (args.deadline - time.time())  # the orchestrator's clock is the wall clock
    stage = Stage(args.stage, plan, args.out, args.work, deadline, args.data)
    stage.data.update(stage=args.stage, dry_run=plan.dry_run, passed=False)
    stage.save()
    try:
        RUNNERS[args.stage](stage)
    except Exception as exc:
        traceback.print_exc()
        stage.data["passed"] = False
        stage.data["problem"] = f"{type(exc).__name__}: {exc}"[:1000]
    stage.save()
    return 0 if stage.data.get("passed") else 1


# ---- the orchestrator: stages in turn, then the summary


def missing_modules() -> dict[str, str]:
    """Per stage, the first module its imports miss in this Python."""
    missing = {}
    for stage, modules in NEEDS.items():
        for name in modules:
            try:
                importlib.import_module(name)
            except ModuleNotFoundError as exc:
                missing[stage] = exc.name or name
                break
    return missing


def run_stage(name: str, plan: Plan, out: Path, work: Path, data: Path | None) -> dict:
    budget = plan.budgets_s[name]
    (out / f"{name}.json").unlink(missing_ok=True)  # never report an earlier run's results as this one's
    cmd = [sys.executable, "-m", "bench.gpu_check", "--stage", name, "--out", str(out), "--work", str(work),
           "--deadline", f"{time.time() + budget - 3:.3f}", *(["--data", str(data)] if data else []),
           *(["--dry-run"] if plan.dry_run else [])]
    env = project_env(PYTHONUNBUFFERED="1", **({"CUDA_VISIBLE_DEVICES": ""} if plan.dry_run else {}))  # a dry run is CPU only, GPU or not
    logger.info("stage %s (budget %.0f s)", name, budget)
    begun = time.monotonic()
    code = run_group(cmd, log=work / f"{name}.log", timeout_s=budget, env=env, grace_s=STOP_GRACE_S)
    record = {"seconds": round(time.monotonic() - begun, 1), "budget_s": budget, "exit_code": code}
    found = results.load(out, name)
    if code is None:
        status, problem = "timeout", f"stopped after its budget of {budget:.0f} s; results so far are kept"
    elif found is None:
        status, problem = "failed", "the stage wrote no results: " + _tail(work / f"{name}.log")
    elif found.get("passed") and code == 0:
        status, problem = "passed", None
    else:
        status, problem = "failed", found.get("problem") or _tail(work / f"{name}.log")
    record.update(status=status, problem=problem, results=found)
    logger.info("stage %s: %s in %.1f s%s", name, status, record["seconds"], f" ({problem})" if problem else "")
    return record


def _tail(log: Path, lines: int = 3) -> str:
    text = log.read_text(errors="replace").strip().splitlines() if log.exists() else []
    return " | ".join(line.strip()[:300] for line in text[-lines:]) or "(no output)"


def write_logs(work: Path, out: Path, names: list[str], keep_bytes: int = 400_000) -> None:
    """gpu-check.log: each stage's output and the logs of the processes it started, the end of
    each when long (the folder that comes back from a GPU machine holds a few files only)."""
    parts = []
    for name in names:
        for log in [work / f"{name}.log", *sorted(work.glob(f"{name}-*.log"))]:
            if log.exists():
                data = log.read_bytes()
                cut = f"[... {len(data) - keep_bytes:,} bytes left out ...]\n" if len(data) > keep_bytes else ""
                parts.append(f"==== {log.name}\n{cut}{data[-keep_bytes:].decode(errors='replace')}\n")
    (out / "gpu-check.log").write_text("".join(parts))


def orchestrate(args: argparse.Namespace, plan: Plan, stages: list[str]) -> int:
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    cuda = describe_cuda()
    summary = {
        "check": "gpu-check", "dry_run": plan.dry_run, "machine": describe(), "cuda": cuda,
        "plan": dataclasses.asdict(plan), "missing_modules": missing_modules(), "stages": {}, "passed": False,
    }
    begun = time.monotonic()
    if not plan.dry_run and not cuda["available"]:
        summary["problem"] = (f"no CUDA device (torch {cuda['torch']}, CUDA build {cuda['cuda']}); nothing was run. "
                              f"On a CPU machine run the dry run: make gpu-check DRY=1")
    else:
        with tempfile.TemporaryDirectory(prefix="tessera-gpu-check-", ignore_cleanup_errors=True) as scratch:
            work = Path(scratch)
            for name in stages:
                summary["stages"][name] = run_stage(name, plan, out, work, args.data)
                summary["seconds"] = round(time.monotonic() - begun, 1)
                summary["passed"] = all(s["status"] == "passed" for s in summary["stages"].values())
                write_summary(out, summary)
                write_logs(work, out, list(summary["stages"]))
    summary["seconds"] = round(time.monotonic() - begun, 1)
    write_summary(out, summary)
    logger.info("%s in %.0f s: %s and %s", "passed" if summary["passed"] else "FAILED", summary["seconds"],
                out / "gpu-check.json", out / "gpu-check.md")
    return 0 if summary["passed"] else (2 if "problem" in summary else 1)


def write_summary(out: Path, summary: dict) -> None:
    results.save(out / "gpu-check.json", summary)
    partial = out / ".gpu-check.md.partial"
    partial.write_text(render(summary))
    os.replace(partial, out / "gpu-check.md")


# ---- the Markdown summary


def fmt(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def render(summary: dict) -> str:
    machine, cuda = summary["machine"], summary["cuda"]
    gpus = ", ".join(f"{g['name']} ({g['memory_gib']} GiB, sm {g['capability']})" for g in cuda["gpus"]) or "none"
    lines = [
        "# gpu-check" + (" (dry run on the CPU: tiny sizes, the numbers mean nothing)" if summary["dry_run"] else ""),
        "",
        f"- {'passed' if summary['passed'] else 'FAILED'} in {fmt(summary.get('seconds'), 1)} s, {machine['measured_at']}, "
        f"commit {machine['git_commit']}",
        f"- GPU: {gpus}; torch {cuda['torch']}, CUDA {cuda['cuda'] or 'none'}, cuDNN {cuda['cudnn'] or 'n/a'}",
        f"- host: {machine['cpu']}, {machine['cores']} cores, {machine['memory_gib']} GiB, Python {machine['python']}",
    ]
    if summary.get("missing_modules"):
        lines.append("- missing in this Python: " + ", ".join(f"`{m}` ({stage})" for stage, m in summary["missing_modules"].items()))
    if summary.get("problem"):
        lines.append(f"- **{summary['problem']}**")
    lines += ["", "| stage | result | seconds (budget) | problem |", "|---|---|---|---|"]
    for name, stage in summary["stages"].items():
        lines.append(f"| {name} | {stage['status']} | {stage['seconds']} ({stage['budget_s']:g}) | {stage['problem'] or ''} |")
    sections = {"tests": tests_section, "raw": raw_section, "service": service_section, "train": train_section}
    for name, stage in summary["stages"].items():
        if stage.get("results"):
            lines += ["", f"## {name}", "", *sections[name](stage["results"])]
    return "\n".join(lines) + "\n"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'---|' * len(header)}", *(f"| {' | '.join(r)} |" for r in rows)]


def tests_section(data: dict) -> list[str]:
    counts = data.get("counts", {})
    lines = [", ".join(f"{counts.get(k, 0)} {k}" for k in ("passed", "failed", "error", "skipped")) + f" (`{data.get('command', '')}`)"]
    bad = [t for t in data.get("tests", []) if t["outcome"] in ("failed", "error")]
    if bad:
        lines += ["", *table(["test", "outcome", "message"], [[t["name"], t["outcome"], t["message"] or ""] for t in bad])]
    return lines


RAW_FORMS = (("eager", "contiguous", "eager"), ("eager", "channels_last", "eager, channels_last"), ("trace", "contiguous", "trace"),
             ("compile", "contiguous", "compile"), ("compile", "channels_last", "compile, channels_last"))


def raw_section(data: dict) -> list[str]:
    """Best tiles/s over the batch sizes (and the batch) of each form, the GPU memory peak of the
    best point, and each compiled form's first call."""
    points = data.get("points", [])
    if not points:
        return [data.get("problem") or "The stage ended before its first point."]
    keys = list(dict.fromkeys((p["model"], p["dtype"], p["op"]) for p in points))
    rows, compiles = [], []
    for model, dtype, op in keys:
        mine = [p for p in points if (p["model"], p["dtype"], p["op"]) == (model, dtype, op)]
        cells = []
        peak = None
        for graph, layout, _ in RAW_FORMS:
            form = [p for p in mine if p["graph"] == graph and p.get("layout", "contiguous") == layout]
            best = max(form, key=lambda p: p["tiles_per_s"], default=None)
            cells.append(f"{fmt(best['tiles_per_s'])} @{best['batch']}" if best else "")
            if best is not None and best.get("peak_mib") is not None:
                peak = max(peak or 0, best["peak_mib"])
            if graph == "compile":
                compiles += [f"{model} {dtype} {op} {layout} @{p['batch']}: {fmt(p['first_call_s'], 1)} s" for p in form]
        rows.append([model, dtype, op, *cells, fmt(peak)])
    cudnn = data.get("cudnn")
    lines = [f"Tiles/s, best over batch sizes {data.get('batch_sizes')} (@ the batch). Peak: GPU MiB allocated at the "
             f"best points (n/a on the CPU)." + (f" cuDNN as torch sets it and the service keeps it: TF32 convolutions "
                                               f"{cudnn['allow_tf32']}, benchmark {cudnn['benchmark']}." if cudnn else ""), "",
             *table(["model", "dtype", "op", *(label for _, _, label in RAW_FORMS), "peak MiB"], rows)]
    if compiles:
        lines += ["", f"torch.compile ({data.get('compile', {}).get('backend')}, static shapes), compilation (first call) "
                      f"per batch size: " + "; ".join(compiles)]
    skipped = [s["setting"] + (" (cut short)" if s.get("cut_short") else "") for s in data.get("settings", [])
               if s.get("skipped") or s.get("cut_short")]
    notes = [f"{s['setting']}: {s['note']}" for s in data.get("settings", []) if s.get("note")]
    failed = [f"{s['setting']} ({s['error']})" for s in data.get("settings", []) if s.get("error")]
    if skipped:
        lines += ["", "Not measured (the budget ran out): " + "; ".join(skipped)]
    if failed:
        lines += ["", "Failed: " + "; ".join(failed)]
    if notes:
        lines += ["", "Notes: " + "; ".join(notes)]
    return lines


def service_section(data: dict) -> list[str]:
    served = data.get("served")
    if not served:
        return [data.get("problem") or "The stage ended before the server was ready."]
    lines = [f"`{data.get('model')}` served on {served.get('device')} in {served.get('dtype')} ({served.get('graph')}), "
             f"max batch {data.get('server_env', {}).get('TESSERA_MAX_BATCH_TILES')}; ready after {fmt(data.get('ready_s'), 1)} s "
             f"(load, trace, warm-up). *raw*: the server's call alone at the batch size the server formed.", ""]
    rows = []
    for part in data.get("parts", {}).values():
        if "ok" not in part:
            rows.append([part["what"], part.get("skipped") or part.get("error") or "", *[""] * 7])
            continue
        raw = part.get("raw") or {}
        rows.append([
            part["what"], f"{part['ok']} / {part['errors']}", fmt(part["tiles_per_s"]), fmt(part["server"]["mean_batch_tiles"], 1),
            fmt(raw.get("tiles_per_s")), fmt(part.get("vs_raw"), 2), fmt(part.get("server_cpu_ms_per_request"), 2),
            fmt(part["latency_ms"]["p50"], 1), fmt(part["latency_ms"]["p99"], 1),
        ])
    return lines + table(["load", "ok / errors", "tiles/s", "mean batch", "raw tiles/s", "vs raw", "server CPU ms/request",
                          "p50 ms", "p99 ms"], rows)


def train_section(data: dict) -> list[str]:
    lines = [f"`{data.get('model')}` on `{data.get('data')}`, {data.get('gpus')} GPU(s).", ""]
    if not data.get("runs"):
        return lines + [data.get("problem") or "The stage ended before its first run."]
    rows = [[r["kind"], str(r.get("world_size")), str(r.get("batch_size")), str(r.get("precision")), fmt(r.get("inputs")),
             fmt(r.get("train_s"), 1), fmt(r.get("inputs_per_s")), fmt(r.get("projected_1m_min"), 1), fmt(r.get("original_1m_min")),
             r.get("stopped") or "failed"]
            for r in data.get("runs", [])]
    lines += table(["run", "processes", "batch", "precision", "inputs", "train s", "inputs/s", "1M inputs, min", "original experiment, min",
                    "stopped by"], rows)
    return lines + ["", f"inputs/s leaves out the first {data.get('warmup_s', 'few')} s of training (cuDNN autotuning)."]


# ---- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every stage with tiny sizes on the CPU")
    parser.add_argument("--out", type=Path, help="results folder (default: $OUT, else bench/results/gpu; dry run: a new temporary folder)")
    parser.add_argument("--stages", default=",".join(STAGES), help="stages to run, in this order (default: %(default)s)")
    parser.add_argument("--budget", action="append", default=[], metavar="STAGE=SECONDS", help="another time budget for a stage")
    parser.add_argument("--data", type=Path, help="training set of the train stage (default: data/dcss; dry run: synthetic sheets)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # one stage in this process (the orchestrator's child)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    setup_logging()
    plan = DRY if args.dry_run else GPU
    budgets = dict(plan.budgets_s)
    for item in args.budget:
        stage, _, seconds = item.partition("=")
        if stage not in STAGES or not seconds.replace(".", "", 1).isdigit():
            parser.error(f"--budget takes STAGE=SECONDS with a stage of {list(STAGES)}, got {item!r}")
        budgets[stage] = float(seconds)
    plan = dataclasses.replace(plan, budgets_s=budgets)
    if args.stage:
        return stage_main(args, plan)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        parser.error(f"unknown stages {unknown}; known: {list(STAGES)}")
    if args.out is None:
        if os.environ.get("OUT"):
            args.out = Path(os.environ["OUT"])
        else:
            args.out = Path(tempfile.mkdtemp(prefix="tessera-gpu-dry-")) if plan.dry_run else results.RESULTS / "gpu"
    return orchestrate(args, plan, stages)


if __name__ == "__main__":
    raise SystemExit(main())
