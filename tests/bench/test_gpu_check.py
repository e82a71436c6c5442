"""``make gpu-check DRY=1``: every stage of the prepared GPU run, tiny, on the CPU, so the script
cannot rot between the times a GPU is at hand. The assertions are on the results' structure;
the dry run's numbers mean nothing."""

from __future__ import annotations

import json
import re
import time

import pytest

from bench import gpu_check, results
from tessera.testing.serve import ROOT

pytestmark = pytest.mark.slow  # every stage, tiny, on the CPU: about a minute


@pytest.mark.timeout(900)  # the stages' budgets, should a busy machine need them
def test_the_dry_run_writes_every_stage(tmp_path):
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path)])
    md = (tmp_path / "gpu-check.md").read_text()
    assert code == 0, md
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert summary["dry_run"] and summary["passed"] and summary["cuda"]["torch"] and summary["machine"]["cores"]
    stages = summary["stages"]
    assert list(stages) == list(gpu_check.STAGES)
    for name, stage in stages.items():
        assert stage["status"] == "passed" and stage["problem"] is None, (name, stage["problem"])
        assert stage["results"] == results.load(tmp_path, name)  # each stage's own file, as it went
        assert 0 < stage["seconds"] <= stage["budget_s"]

    tests = stages["tests"]["results"]
    assert tests["tests"] and tests["counts"]["failed"] == tests["counts"]["error"] == 0
    assert all(t["name"].startswith("tests.gpu.test_cuda::") for t in tests["tests"])  # the gpu-marked ones, collected

    raw = stages["raw"]["results"]
    assert all(s["points"] > 0 and "error" not in s for s in raw["settings"])
    forms = {(p["graph"], p["layout"]) for p in raw["points"]}
    assert forms == {("eager", "contiguous"), ("eager", "channels_last"), ("trace", "contiguous"), ("compile", "contiguous")}
    bundled = {path.stem for path in (ROOT / "checkpoints").glob("*.safetensors")}
    assert {p["model"] for p in raw["points"]} == {"dcae-t48", *bundled}  # the big model's stand-in and every bundled one
    assert all(p["tiles_per_s"] > 0 and p["first_call_s"] > 0 and "peak_mib" in p for p in raw["points"])

    service = stages["service"]["results"]
    assert service["served"]["name"] == "dcae-t48" and list(service["parts"]) == ["sheet", "clients", "wrk"]
    for key in ("sheet", "clients"):
        part = service["parts"][key]
        assert part["ok"] > 0 and part["errors"] == 0 and part["cached_tiles"] == 0
        assert part["raw"]["batch"] == round(part["server"]["mean_batch_tiles"]) and part["vs_raw"] > 0
        assert part["server_cpu_ms_per_request"] > 0
    wrk = service["parts"]["wrk"]
    assert wrk.get("skipped", "").startswith("wrk not found") or (wrk["ok"] > 0 and wrk["errors"] == 0)

    train = stages["train"]["results"]
    assert [r["kind"] for r in train["runs"]] == ["single", "torchrun"]
    for run in train["runs"]:
        assert run["stopped"] in ("itself", "SIGINT") and "problem" not in run and run["inputs"] > 0 and run["inputs_per_s"] > 0
        assert run["projected_1m_min"] == 1e6 / run["inputs_per_s"] / 60 and run["original_1m_min"] == 78
    # the single run's schedule outlasts its window; torchrun's --stop-after ends it near the window, or SIGINT does
    assert train["runs"][0]["stopped"] == "SIGINT" and train["runs"][0]["exit_code"] == 130

    assert md.startswith("# gpu-check (dry run") and all(f"\n## {name}\n" in md for name in gpu_check.STAGES)
    assert all(f"==== {name}.log" in (tmp_path / "gpu-check.log").read_text() for name in gpu_check.STAGES)
    # what comes back from a lent GPU machine: at most 8 plain files with plain names
    files = [p.name for p in tmp_path.iterdir()]
    assert len(files) <= 8 and all(re.fullmatch(r"[\w.-]+", f) for f in files), files


def test_a_failing_stage_is_recorded_and_the_next_one_still_runs(tmp_path):
    code = gpu_check.main(["--dry-run", "--out", str(tmp_path), "--stages", "train,tests", "--data", str(tmp_path / "none")])
    assert code == 1
    summary = json.loads((tmp_path / "gpu-check.json").read_text())
    assert not summary["passed"] and list(summary["stages"]) == ["train", "tests"]
    train, tests = summary["stages"]["train"], summary["stages"]["tests"]
    assert train["status"] == "failed" and train["problem"].startswith(f"no data set in {tmp_path / 'none'}")
    assert tests["status"] == "passed"
    md = (tmp_path / "gpu-check.md").read_text()
    assert "| train | failed |" in md and "| tests | passed |" in md


def test_a_torchrun_stopped_by_sigint_has_stopped_cleanly(tmp_path):
    """torchrun itself exits 1 on SIGINT after its processes have saved and stopped; that is no failure."""
    plan = gpu_check.DRY
    stage = gpu_check.Stage("train", plan, tmp_path, tmp_path, time.monotonic() + 120, None)
    data, run = gpu_check.dry_data(tmp_path), tmp_path / "run"
    command = gpu_check.train_command(plan, data, run, plan.train_batch, plan.train_max_inputs, processes=1)
    entry = gpu_check.train_once(stage, "torchrun", command, run, 1e-6, gpu_check.train_env(plan))  # SIGINT at its second row
    assert entry["signalled"] and entry["exit_code"] == 1 and entry["stopped"] == "SIGINT" and "problem" not in entry, entry
    assert (run / "last.safetensors").exists() and entry["inputs"] > 0


def test_how_a_training_run_stopped():
    assert gpu_check.how_it_stopped(0, False, "") == gpu_check.how_it_stopped(0, True, "") == "itself"
    assert gpu_check.how_it_stopped(130, True, "") == "SIGINT"
    assert gpu_check.how_it_stopped(1, True, "stopped at 1,024 inputs; continue with: tessera train --resume\n") == "SIGINT"
    assert gpu_check.how_it_stopped(1, True, "Traceback ...\nRuntimeError: boom\n") is None  # killed mid-step, nothing saved
    assert gpu_check.how_it_stopped(130, False, "") is None  # interrupted by someone else
    assert gpu_check.how_it_stopped(-9, True, "") is None
