"""The PCA yardstick and the sharpness figure of `tessera evaluate`, and the MSE phase of a run."""

from __future__ import annotations

import csv
import math
import os

import numpy as np
import pytest
import torch
from training_helpers import tiny_config

from tessera import model
from tessera.training.dataset import TileData
from tessera.training.evaluate import evaluate_checkpoints, markdown_table
from tessera.training.metrics import gradient_magnitude, reconstruction_sums, sharpness_from_sums, SUMS
from tessera.training.pca import PCA
from tessera.training.loop import train


def test_pca_with_every_component_gives_the_tiles_back_and_fewer_lose_detail(tiny_data):
    data = TileData.open(tiny_data)
    train_tiles = torch.from_numpy(data.split("train")).permute(0, 3, 1, 2).float() / 255
    full = PCA.fit(data, len(train_tiles) - 1)  # the centred tiles span at most N - 1 directions
    assert torch.allclose(full(train_tiles), train_tiles, atol=1e-3)
    few = PCA.fit(data, 4)
    assert (few(train_tiles) - train_tiles).square().mean() > (full(train_tiles) - train_tiles).square().mean()
    assert few.encode(train_tiles).shape == (len(train_tiles), 4)


def test_the_pca_fit_is_cached_beside_the_data_and_refit_when_the_data_changes(tiny_data, tmp_path):
    data = TileData.open(tiny_data)
    PCA.fit(data, 8)
    cache = tiny_data / "pca-rgb.npz"
    stamp = cache.stat().st_mtime_ns
    again = PCA.fit(data, 8)
    assert cache.stat().st_mtime_ns == stamp  # read, not refitted
    with np.load(cache) as stored:
        stored = dict(stored)
    stored["manifest_sha256"] = np.array("0" * 64)
    np.savez(cache, **stored)  # as if the data set had been rebuilt with other tiles
    refit = PCA.fit(data, 8)
    assert cache.stat().st_mtime_ns != stamp
    assert torch.allclose(refit.basis.abs(), again.basis.abs(), atol=1e-4)


def test_sharpness_is_one_for_the_tiles_themselves_and_low_for_a_blur():
    tiles = (torch.rand(6, 3, 32, 32) * 255).to(torch.uint8)

    class Blur(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.avg_pool2d(x, 3, 1, 1)

    identity = reconstruction_sums(torch.nn.Identity(), tiles, sharpness=True)
    blurred = reconstruction_sums(Blur(), tiles, sharpness=True)
    assert sharpness_from_sums(*identity[SUMS:].tolist()) == pytest.approx(1.0)
    assert sharpness_from_sums(*blurred[SUMS:].tolist()) < 0.5
    assert gradient_magnitude(torch.ones(1, 3, 8, 8)).sum() == 0


def test_evaluate_reports_the_pca_margin_on_the_models_own_training_data(tiny_data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(tiny_data, out, max_inputs=64, eval_every=64))
    report = evaluate_checkpoints([str(out / "last.safetensors")], tiny_data)
    (row,) = report["rows"]
    pca = row["pca"]
    values = math.prod(row["latent_shape"])
    assert pca["components"] == values and pca["fitted_on"]["models_training_data"]
    assert pca["fitted_on"]["manifest_sha256"] == TileData.open(tiny_data).manifest_sha256
    assert pca["margin_db"] == pytest.approx(row["val_psnr"] - pca["psnr"])
    assert 0 < row["val_sharpness"] and 0 < pca["sharpness"]
    table = markdown_table(report)
    assert f"| {values} | `{tiny_data}` |" in table and f"{pca['margin_db']:+.2f}" in table

    other = tmp_path / "other-data"
    os.symlink(tiny_data, other, target_is_directory=True)  # the same tiles under another name...
    (row,) = evaluate_checkpoints([str(out / "last.safetensors")], other)["rows"]
    assert row["pca"]["fitted_on"]["models_training_data"]  # ...are still the model's training data


def test_the_mse_phase_trains_the_last_part_of_the_schedule_on_mse(tiny_data, tmp_path):
    out = tmp_path / "mse"
    train(tiny_config(tiny_data, out, max_inputs=128, eval_every=64, mse_phase=0.5))
    _, info = model.load_checkpoint(out / "last.safetensors")
    steps = info["training"]["max_inputs"] // info["training"]["batch_size"]
    assert info["training"]["loss"] == f"l1, then MSE from step {steps // 2}"
    with open(out / "train.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    before = [float(r["loss"]) for r in rows if int(r["step"]) <= steps // 2]
    after = [float(r["loss"]) for r in rows if int(r["step"]) > steps // 2]
    assert before and after and max(after) < min(before)  # squared errors of ~0.2 are far below their L1
    with pytest.raises(ValueError, match="mse-phase"):
        tiny_config(tiny_data, out, mse_phase=1.5)


def test_train_checks_the_packages_it_needs_before_the_first_step(tiny_data, tmp_path, monkeypatch):
    import importlib.util

    from tessera.training.errors import TrainingError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *rest: None if name == "torchmetrics" else real(name, *rest))
    with pytest.raises(TrainingError, match=r"needs torchmetrics: install the train extra"):
        train(tiny_config(tiny_data, tmp_path / "run"))
    assert not (tmp_path / "run").exists()  # refused before anything was written
