"""``make gpu-train``: the study's best ratio-48 layout, larger and longer than a CPU allows,
trained on a GPU within a fixed time budget, then evaluated against its PCA yardstick.

One prepared run that needs no one watching:

1. ``calibrate``: a short ``tessera train`` (bf16 autocast on CUDA) measures inputs/s;
2. ``train``: the run itself, its cosine schedule sized so that it ends inside the budget
   (``--max-inputs`` = the measured rate x the seconds left for it), augmented, the last 20% on MSE;
3. ``evaluate``: ``tessera evaluate`` of its best checkpoint on the validation tiles, with the
   PCA margin and sharpness.

Everything lands in ``--out``, else ``$OUT`` when set, else ``bench/results/gpu-train/``: the
run folder (``run/``: checkpoints with their record, ``train.csv``, ``val.csv``, ``run.json``),
``evaluation.md``/``.json``, ``gpu-train.json`` (what ran, rates, the numbers) and
``gpu-train.log``. The data set is not built on the GPU machine (it has no network): carry the
RGB files of the two-package corpus (``scripts/gpu_data.sh``).

    python -m bench.gpu_train                 # on the GPU machine (make gpu-train)
    python -m bench.gpu_train --dry-run       # the same steps, tiny, on the CPU, in seconds (make gpu-train DRY=1)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.machine import ROOT
from bench.procs import project_env
from tessera.testing.serve import tessera_command


@dataclass(frozen=True)
class Plan:
    dry_run: bool
    model: str
    device: str
    data: str  # relative to the repository unless absolute; the dry run makes its own
    batch_size: int
    lr: float
    warmup: int
    budget_s: float  # the whole run, calibration and evaluation included
    calibrate_inputs: int
    reserve_s: float  # kept back for start-up, validations, the last save and the evaluation


GPU = Plan(dry_run=False, model="dcae-s48-f8c4-l", device="cuda", data="data/gpu/corpus", batch_size=256, lr=2e-3,
           warmup=50_000, budget_s=9 * 60, calibrate_inputs=60_000, reserve_s=90)
DRY = Plan(dry_run=True, model="dcae-t48", device="cpu", data="", batch_size=8, lr=1e-3, warmup=0, budget_s=40,
           calibrate_inputs=160, reserve_s=25)


def train_command(plan: Plan, data: Path, out: Path, max_inputs: int, stop_after: int | None = None) -> list[str]:
    return [
        *tessera_command(), "train", "--model", plan.model, "--data", str(data), "--out", str(out),
        "--device", plan.device, "--batch-size", str(plan.batch_size), "--max-inputs", str(max_inputs),
        "--lr", str(plan.lr), "--warmup", str(plan.warmup), "--augment", "--mse-phase", "0.2",
        "--eval-every", str(max(plan.batch_size, max_inputs // 4)), "--checkpoint-dtype", "float16",
        "--log-every", "1" if plan.dry_run else "10",
        "--no-tensorboard", "--no-progress", *(["--stop-after", str(stop_after)] if stop_after else []),
        *(["--threads", "1"] if plan.dry_run else []),
    ]


def run(cmd: list[str], log: Path) -> float:
    """Run ``cmd`` with its output appended to ``log``; its wall time. Raises on a failure."""
    start = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        subprocess.run(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=True,
                       env=project_env())
    return time.monotonic() - start


def rate_of(run_dir: Path) -> float:
    """Inputs per second of training in a run's train.csv (its second half: past the warm-up)."""
    from tessera.training.logs import read_csv

    rows = [(int(r["inputs"]), float(r["elapsed_s"])) for r in read_csv(run_dir / "train.csv")]
    first, last = rows[len(rows) // 2], rows[-1]
    if last[1] > first[1]:
        return (last[0] - first[0]) / (last[1] - first[1])
    return last[0] / last[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny, on the CPU, in seconds")
    parser.add_argument("--out", type=Path, help="results folder (default: $OUT, else bench/results/gpu-train)")
    parser.add_argument("--data", type=Path, help="data set folder (default: the plan's)")
    args = parser.parse_args(argv)
    plan = DRY if args.dry_run else GPU
    started = time.monotonic()
    out = args.out or (Path(os.environ["OUT"]) / "gpu-train" if os.environ.get("OUT") else
                       Path(tempfile.mkdtemp(prefix="tessera-gpu-train-")) if plan.dry_run else ROOT / "bench/results/gpu-train")
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu-train.log"
    summary: dict = {"plan": asdict(plan), "passed": False}
    try:
        if args.data is not None:
            data = args.data
        elif plan.dry_run:
            from bench.gpu_check import dry_data

            data = dry_data(out / "work")
        else:
            data = ROOT / plan.data
        if not (data / "manifest.json").exists():
            raise FileNotFoundError(f"no data set in {data}: build it on the CPU side and carry it (scripts/gpu_data.sh)")
        calibration = out / "calibrate"
        run(train_command(plan, data, calibration, 10**9, stop_after=plan.calibrate_inputs), log)
        rate = rate_of(calibration)
        left = plan.budget_s - (time.monotonic() - started) - plan.reserve_s
        max_inputs = max(plan.batch_size * 4, int(rate * left) // plan.batch_size * plan.batch_size)
        summary.update(calibrated_inputs_per_s=rate, max_inputs=max_inputs, train_budget_s=left)
        summary["train_s"] = run(train_command(plan, data, out / "run", max_inputs), log)
        summary["train_inputs_per_s"] = rate_of(out / "run")
        run([*tessera_command(), "evaluate", str(out / "run" / "best.safetensors"), str(out / "run" / "last.safetensors"),
             "--data", str(data), "--out", str(out / "evaluation")], log)
        evaluation = json.loads((out / "evaluation.json").read_text())
        summary["evaluation"] = [{k: row.get(k) for k in ("name", "val_psnr", "val_sharpness", "inputs_seen")}
                                 | {"pca_psnr": row["pca"]["psnr"], "pca_margin_db": row["pca"]["margin_db"]}
                                 for row in evaluation["rows"]]
        summary["passed"] = True
    except (subprocess.CalledProcessError, FileNotFoundError, KeyError, ValueError) as exc:
        summary["problem"] = f"{type(exc).__name__}: {exc}"
    summary["wall_s"] = time.monotonic() - started
    (out / "gpu-train.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    print(f"wrote {out}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
