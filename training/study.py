"""Training studies at a fixed budget: each row one change against a stated base.

    python -m tessera.training.study all --jobs 3     # runs what is missing, resumes what was cut short
    python -m tessera.training.study report           # docs/study.json and the markdown tables

Every row is a ``tessera train`` run in ``runs/study/<row>`` on one torch thread (runs go side by
side, ``--jobs`` at a time), with the same number of inputs. Every run also keeps an EMA of its
weights: it does not change the training, so the EMA row of the recipe study is the base run's
EMA copy, at no extra cost. Rows are compared on their last validation (the end of the cosine
schedule), per validation source.

The recipe study runs in two stages: the learning rates against the original recipe, then every
other change against the best learning rate (best = highest PSNR over all validation tiles). The
layout study needs only the first stage: every layout trains with the best learning rate's
settings, and the 64x1x1 row is that run itself (dcae-s48 is dcae-s48-f32c64). Both studies can
therefore run side by side once the learning rates are done.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tessera.training.loop import SOURCE_METRICS

INPUTS = 200_000
DATA = "data/corpus"
EMA = 0.999
WARMUP = 10_000  # inputs of warm-up for the higher learning rates (5% of the budget)
SEED_RECIPE = {"model": "dcae-s48", "lr": 9.375e-5}
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Row:
    name: str
    base: str  # the row this one changes, or "" for a base
    change: str  # what differs from the base, in words
    settings: dict = field(default_factory=dict)  # tessera train options
    run: str = ""  # report this other row's run instead of training one
    ema: bool = False  # report the run's EMA copy rather than its trained weights
    stopped: str = ""  # why the row was stopped before the end of the budget (it is then compared at equal inputs)


def lr_rows() -> list[Row]:
    return [
        Row("seed", "", "the original recipe: lr 9.375e-5, batch 64, L1, no augmentation", dict(SEED_RECIPE)),
        Row("lr-3e-4", "seed", f"lr 3e-4, {WARMUP:,} inputs of warm-up",
            {**SEED_RECIPE, "lr": 3e-4, "warmup": WARMUP}),
        Row("lr-1e-3", "seed", f"lr 1e-3, {WARMUP:,} inputs of warm-up",
            {**SEED_RECIPE, "lr": 1e-3, "warmup": WARMUP}),
    ]


def recipe_rows(best_lr: Row) -> list[Row]:
    base = best_lr.settings
    return lr_rows() + [
        Row("ema", best_lr.name, f"the EMA of the weights (decay {EMA})", run=best_lr.name, ema=True),
        Row("augment", best_lr.name, "random flips and quarter turns", {**base, "augment": True},
            stopped="stopped after 119,872 inputs to give its core to the later rows"),
        Row("batch-32", best_lr.name, "batch 32 (twice the steps)", {**base, "batch_size": 32}),
        Row("batch-128", best_lr.name, "batch 128 (half the steps)", {**base, "batch_size": 128},
            stopped="stopped at 116,992 inputs to give its core to the later rows"),
        Row("l1+grad", best_lr.name, "L1 + 0.5 x image-gradient L1", {**base, "loss": "l1+grad"}),
    ]


def layout_rows(best_lr: Row) -> list[Row]:
    """The latent layouts at ratio 48 and DC-AE against the baseline at matched size, all with the best
    learning rate's settings."""
    recipe = best_lr.settings

    def using(model: str) -> dict:
        return {**recipe, "model": model}

    return [
        Row("layout-f32c64", "", f"64x1x1 (the original experiment's layout), dcae-s48 = dcae-s48-f32c64 (the {best_lr.name} run)",
            run=best_lr.name),
        Row("layout-f16c16", "layout-f32c64", "16x2x2, dcae-s48-f16c16", using("dcae-s48-f16c16")),
        Row("layout-f8c4", "layout-f32c64", "4x4x4, dcae-s48-f8c4", using("dcae-s48-f8c4")),
        Row("matched-dcae-m48", "matched-baseline", "DC-AE at ratio 48 with ~5M parameters (4x4x4, 5.42M), dcae-m48-f8c4",
            using("dcae-m48-f8c4")),
        Row("matched-baseline", "", "the baseline at ratio 24 (5.05M), same recipe", using("baseline")),
    ]


# ---- running


def train_command(row: Row, out: Path, data: str, resume: bool) -> list[str]:
    if resume:
        return [sys.executable, "-m", "tessera.training.train", "--out", str(out), "--resume", "--no-progress"]
    command = [sys.executable, "-m", "tessera.training.train", "--out", str(out), "--data", data,
               "--max-inputs", str(INPUTS), "--ema", str(EMA), "--threads", "1", "--eval-every", "20000",
               "--checkpoint-dtype", "float16", "--no-progress", "--no-tensorboard"]
    for key, value in row.settings.items():
        if key == "ema":  # every study run keeps an EMA
            continue
        if value is True:
            command.append(f"--{key.replace('_', '-')}")
        elif value not in (None, False):
            command += [f"--{key.replace('_', '-')}", str(value)]
    return command


def last_val(run: Path) -> dict | None:
    path = run / "val.csv"
    if not path.is_file():
        return None
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows[-1] if rows else None


def finished(run: Path) -> bool:
    last = last_val(run)
    return last is not None and int(last["inputs"]) >= INPUTS - 128


def run_rows(rows: list[Row], out: Path, data: str, jobs: int) -> None:
    """Train every row that has not finished, ``jobs`` at a time."""
    todo = [r for r in rows if not r.run and not r.stopped and not finished(out / r.name)]
    running: list[tuple[Row, subprocess.Popen]] = []
    while todo or running:
        while todo and len(running) < jobs:
            row = todo.pop(0)
            run = out / row.name
            resume = (run / "last.state.pt").is_file()
            run.mkdir(parents=True, exist_ok=True)
            log = open(run / "train.log", "a")
            print(f"{'resuming' if resume else 'starting'} {row.name}", flush=True)
            running.append((row, subprocess.Popen(train_command(row, run, data, resume), cwd=ROOT,
                                                  stdout=log, stderr=subprocess.STDOUT)))
        time.sleep(5)
        for item in list(running):
            row, proc = item
            if proc.poll() is not None:
                running.remove(item)
                print(f"{row.name}: exit {proc.returncode}", flush=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{row.name} failed; see {out / row.name / 'train.log'}")


# ---- results


def row_result(row: Row, out: Path) -> dict | None:
    run_dir = out / (row.run or row.name)
    last = last_val(run_dir)
    if last is None:
        return None
    # a plain row reports the trained weights (raw_*), the EMA row the run's EMA copy
    if row.ema:
        metrics = {k: float(v) for k, v in last.items() if k.startswith("val_") or k.endswith(tuple(f"_{m}" for m in SOURCE_METRICS))}
    else:
        metrics = {k[4:]: float(v) for k, v in last.items() if k.startswith("raw_")}
    run = json.loads((run_dir / "run.json").read_text())
    with open(run_dir / "train.csv", newline="") as handle:
        train = list(csv.DictReader(handle))
    found = {"name": row.name, "base": row.base, "change": row.change, "stopped": row.stopped, "inputs": int(last["inputs"]),
             "run": run_dir.name, "finished": finished(run_dir), "model": run["spec"],
             "settings": {k: run.get(k) for k in ("lr", "warmup", "batch_size", "augment", "loss")},
             "train_s": float(train[-1]["elapsed_s"]) if train else None, "metrics": metrics}
    if row.stopped and row.base:  # a row stopped early: both at the last validation they share
        with open(run_dir / "val.csv", newline="") as handle:
            mine = {int(r["inputs"]): r for r in csv.DictReader(handle)}
        with open(out / row.base / "val.csv", newline="") as handle:
            theirs = {int(r["inputs"]): r for r in csv.DictReader(handle)}
        shared = max(set(mine) & set(theirs), default=None)
        if shared is not None:
            found["inputs"] = shared
            found["metrics"] = {k[4:]: float(v) for k, v in mine[shared].items() if k.startswith("raw_")}
            found["base_at_same_inputs"] = {k[4:]: float(v) for k, v in theirs[shared].items() if k.startswith("raw_")}
    return found


def best(results: list[dict], names: list[str]) -> dict:
    candidates = [r for r in results if r and r["name"] in names and r["finished"]]
    return max(candidates, key=lambda r: r["metrics"]["val_psnr"]) if candidates else None


def sources_of(result: dict) -> list[str]:
    return [k[: -len("_psnr")] for k in result["metrics"] if k.endswith("_psnr") and k != "val_psnr"]


def markdown(results: list[dict]) -> str:
    results = [r for r in results if r]
    if not results:
        return "(no results yet)\n"
    sources = sources_of(results[0])
    head = "| row | change (against) | all: L1 / PSNR / SSIM | " + " | ".join(f"{s} PSNR / SSIM" for s in sources)
    lines = [head + " | train s |", "|---|---|---|" + "---|" * len(sources) + "---:|"]
    for r in results:
        m = r["metrics"]
        cells = [f"{m[f'{s}_psnr']:.2f} / {m[f'{s}_ssim']:.3f}" for s in sources]
        against = f" ({r['base']})" if r["base"] else ""
        done = "" if r["finished"] else f" (at {r['inputs']:,})"
        if r.get("base_at_same_inputs"):
            done += f" [base at the same inputs: {r['base_at_same_inputs']['val_psnr']:.2f} dB]"
        lines.append(f"| {r['name']}{done} | {r['change']}{against} | {m['val_l1']:.4f} / {m['val_psnr']:.2f} / "
                     f"{m['val_ssim']:.3f} | " + " | ".join(cells) + f" | {r['train_s'] or 0:,.0f} |")
    return "\n".join(lines) + "\n"


def best_lr_row(out: Path) -> Row | None:
    lr = [row_result(r, out) for r in lr_rows()]
    picked = best(lr, [r.name for r in lr_rows()])
    return next(r for r in lr_rows() if r.name == picked["name"]) if picked else None


def collect(out: Path, docs: Path) -> dict:
    """Results of every study row found in ``out``; logs copied to ``docs/runs/study``."""
    report = {"inputs": INPUTS, "data": DATA, "ema": EMA, "criterion": "val_psnr over all sources"}
    picked = best_lr_row(out)
    if picked is not None:
        rows = recipe_rows(picked)
        report["best_lr"] = picked.name
        report["recipe"] = [row_result(r, out) for r in rows]
        report["layout"] = [row_result(r, out) for r in layout_rows(picked)]
        if all(result and (result["finished"] or row.stopped) for row, result in zip(rows, report["recipe"])):
            report["picked_recipe"] = pick_recipe(report["recipe"], rows)
    for name in {r["run"] for part in ("recipe", "layout") for r in report.get(part, []) if r}:
        src, dst = out / name, docs / "runs" / "study" / name
        dst.mkdir(parents=True, exist_ok=True)
        for file in ("train.csv", "val.csv", "run.json"):
            shutil.copyfile(src / file, dst / file)
    return report


def pick_recipe(results: list[dict], rows: list[Row]) -> dict:
    """The best learning rate's settings plus every change that beat it on PSNR over all
    validation tiles (of the two batch sizes, the better one); the EMA when its copy beat the
    trained weights."""
    by_name = {r["name"]: r for r in results if r and r["finished"]}  # a row stopped early takes no part
    base_row = next(r for r in rows if r.name == rows[-1].base)
    base = by_name[base_row.name]["metrics"]["val_psnr"]
    recipe = dict(base_row.settings)
    batches = [r for r in rows if r.name.startswith("batch-") and r.name in by_name]
    if batches:
        winner = max(batches, key=lambda r: by_name[r.name]["metrics"]["val_psnr"])
        rows = [r for r in rows if not r.name.startswith("batch-") or r is winner]
    changes = [r for r in rows if r.base == base_row.name and r.name in by_name
               and by_name[r.name]["metrics"]["val_psnr"] > base]
    losses = [r for r in changes if "loss" in r.settings]
    for r in changes:
        if r in losses and r is not max(losses, key=lambda r: by_name[r.name]["metrics"]["val_psnr"]):
            continue
        if r.ema:
            recipe["ema"] = EMA
        else:
            recipe.update({k: v for k, v in r.settings.items() if base_row.settings.get(k) != v})
    return recipe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.training.study", description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=("recipe", "layout", "all", "report"),
                        help="recipe or layout: the learning rates, then that study; all: both; report: tables only")
    parser.add_argument("--out", default="runs/study", help="folder of the study's runs (default: %(default)s)")
    parser.add_argument("--data", default=DATA, help="data set (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=2, help="runs side by side (default: %(default)s)")
    parser.add_argument("--docs", default="docs", help="where study.json and the logs go (default: %(default)s)")
    args = parser.parse_args(argv)
    out, docs = Path(args.out), Path(args.docs)
    if args.stage != "report":
        run_rows(lr_rows(), out, args.data, args.jobs)
        picked = best_lr_row(out)
        rows = {"recipe": recipe_rows, "layout": layout_rows}
        run_rows([r for stage in rows if args.stage in (stage, "all") for r in rows[stage](picked)], out, args.data,
                 args.jobs)
    report = collect(out, docs)
    docs.mkdir(parents=True, exist_ok=True)
    (docs / "study.json").write_text(json.dumps(report, indent=2) + "\n")
    for part in ("recipe", "layout"):
        if part in report:
            print(f"\n{part} ({INPUTS:,} inputs each, on {args.data}):\n")
            print(markdown(report[part]))
    if "picked_recipe" in report:
        print(f"picked recipe: {report['picked_recipe']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
