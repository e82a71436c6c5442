"""``make gpu-train DRY=1``: the prepared GPU training run, tiny, on the CPU, so it cannot rot
between the times a GPU is at hand."""

from __future__ import annotations

import json

from tessera import model
from bench import gpu_train


def test_the_gpu_training_run_calibrates_trains_inside_its_budget_and_measures_against_pca(tmp_path):
    assert gpu_train.main(["--dry-run", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "gpu-train.json").read_text())
    assert summary["passed"] and summary["calibrated_inputs_per_s"] > 0
    assert summary["max_inputs"] % gpu_train.DRY.batch_size == 0
    _, info = model.load_checkpoint(tmp_path / "run" / "best.safetensors")
    record = info["training"]
    assert (record["spec"], record["max_inputs"], record["mse_phase"]) == (gpu_train.DRY.model, summary["max_inputs"], 0.2)
    assert "then MSE from step" in record["loss"]
    rows = summary["evaluation"]
    assert [r["name"] for r in rows] == ["run (best)", "run (last)"]
    assert all(r["pca_margin_db"] == r["val_psnr"] - r["pca_psnr"] and r["val_sharpness"] > 0 for r in rows)
    assert "Against PCA" in (tmp_path / "evaluation.md").read_text()


def test_the_gpu_plan_trains_the_large_layout_of_the_default_latent():
    assert model.build(gpu_train.GPU.model, device="meta").latent_shape == model.build("dcae-s48-f8c4", device="meta").latent_shape
