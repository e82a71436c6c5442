"""The recipe's parts: warm-up schedule, EMA, structure losses, SSIM and per-source metrics, and
how the study picks a recipe from its rows."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
import torch
from torch import nn
from training_helpers import tiny_config

from tessera import model
from tessera.training import study
from tessera.training.losses import gradient_l1, ssim, training_loss
from tessera.training.metrics import evaluate_reconstruction, metrics_from_sums
from tessera.training.config import TrainConfig
from tessera.training.errors import TrainingError
from tessera.training.loop import ema_of, schedule, train

from tessera.testing.checkpoints import tiny_rgba


def test_warm_up_rises_linearly_then_the_cosine_falls_to_zero():
    factor = schedule(total_steps=110, warmup_steps=10)
    assert [factor(s) for s in range(3)] == [0.1, 0.2, 0.3]
    assert factor(9) == 1.0 and factor(10) == 1.0
    assert factor(60) == pytest.approx(0.5)
    assert factor(110) == pytest.approx(0.0)
    plain = schedule(total_steps=100, warmup_steps=0)  # no warm-up: torch's CosineAnnealingLR
    assert plain(0) == 1.0 and plain(50) == pytest.approx(0.5)


def test_ema_ramps_its_decay_and_copies_integer_buffers():
    net = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    ema = ema_of(net, decay=0.99)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net.train()(torch.randn(4, 2))  # one BatchNorm step: num_batches_tracked 0 -> 1
    ema.update_parameters(net)  # the first update copies (AveragedModel's rule)
    assert torch.equal(ema.module[0].weight, net[0].weight)
    with torch.no_grad():
        net[0].weight.add_(1.0)
    ema.update_parameters(net)  # second: decay min(0.99, 2/11), so it moves 9/11 of the way
    assert torch.allclose(ema.module[0].weight, start + 1 + 9 / 11, atol=1e-6)
    assert ema.module[1].num_batches_tracked.item() == 1


def test_a_run_with_ema_ships_the_average_and_logs_both(tiny_data, tmp_path):
    out = tmp_path / "ema"
    train(tiny_config(tiny_data, out, ema=0.9, warmup=64, loss="l1+grad"))
    shipped, info = model.load_checkpoint(out / "last.safetensors")
    record = info["training"]
    assert record["weights"] == "EMA (decay 0.9)" and record["loss"] == "l1+grad (weight 0.5)"
    assert record["schedule"].startswith("linear warm-up over 4 steps")
    state = torch.load(out / "last.state.pt", weights_only=True)
    raw = state["model"]
    assert any(not torch.equal(v, raw[k]) for k, v in shipped.state_dict().items() if v.is_floating_point())
    with open(out / "val.csv", newline="") as handle:
        last = list(csv.DictReader(handle))[-1]
    assert {"val_ssim", "raw_val_l1", "raw_val_psnr", "raw_val_ssim"} <= set(last)
    assert float(last["val_l1"]) != float(last["raw_val_l1"])


def test_resuming_an_ema_run_gives_the_same_weights(tiny_data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train(tiny_config(tiny_data, full, ema=0.9))
    train(tiny_config(tiny_data, cut, ema=0.9, stop_after=256))
    train(tiny_config(tiny_data, cut, ema=0.9, resume=True))
    a = model.load_checkpoint(full / "last.safetensors")[0].state_dict()
    b = model.load_checkpoint(cut / "last.safetensors")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_structure_terms_see_what_l1_does_not():
    x = torch.zeros(1, 3, 32, 32)
    x[..., :, 16:] = 1.0  # a hard edge
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert ssim(x, x).item() == pytest.approx(1.0)
    assert ssim(blurred, x).item() < 0.99
    assert gradient_l1(x, x).item() == 0 and gradient_l1(blurred, x).item() > 0
    assert training_loss(blurred, x, "l1+grad", 0.5) > training_loss(blurred, x, "l1")
    assert training_loss(blurred, x, "l1+ssim", 0.2) > training_loss(blurred, x, "l1")
    with pytest.raises(ValueError, match="unknown loss"):
        training_loss(x, x, "l2")


def test_metrics_pool_sums_and_ssim_is_per_tile():
    identity = nn.Identity()
    tiles = torch.randint(0, 256, (5, 3, 32, 32), dtype=torch.uint8)
    m = evaluate_reconstruction(identity, tiles)
    assert m["val_l1"] == 0 and m["val_psnr"] == math.inf and m["val_ssim"] == pytest.approx(1.0)
    assert metrics_from_sums(2.0, 0.1, 10.0, 3.0, 4.0) == {
        "val_l1": 0.2, "val_mse": 0.01, "val_psnr": pytest.approx(20.0), "val_ssim": 0.75}


@pytest.mark.parametrize("name, latent, ratio", [
    ("dcae-s48-f32c64", (64, 1, 1), 48), ("dcae-s48-f16c16", (16, 2, 2), 48), ("dcae-s48-f8c4", (4, 4, 4), 48),
    ("dcae-s12-f8c16", (16, 4, 4), 12), ("dcae-m48-f16c16", (16, 2, 2), 48), ("dcae-m48-f8c4", (4, 4, 4), 48),
    ("dcae-s48-f4c1", (1, 8, 8), 48), ("dcae-s12-f4c4", (4, 8, 8), 12), ("dcae-s64-f4c1-rgba", (1, 8, 8), 64),
    ("dcae-s32-f8c8-rgba", (8, 4, 4), 32), ("dcae-s16-f8c16-rgba", (16, 4, 4), 16),
])
def test_layout_presets_have_the_latent_their_names_say(name, latent, ratio):
    net = model.build(name).eval()
    assert net.latent_shape == latent and net.compression_ratio == ratio
    x = torch.rand(2, net.config.in_channels, 32, 32)
    with torch.no_grad():
        z = net.encode(x)
        assert z.shape == (2, *latent) and net.decode(z).shape == x.shape
    if name.startswith("dcae-m48"):  # matched to the baseline's 5.05M parameters within 8%
        assert abs(net.num_params - 5_053_491) / 5_053_491 < 0.08
    if "-f4c" in name:  # the 8x8-latent models are the f8 models' size within 5%
        f8 = model.build("dcae-s48-f8c4").num_params
        assert abs(net.num_params - f8) / f8 < 0.05


def result(name: str, psnr: float) -> dict:
    return {"name": name, "finished": True, "metrics": {"val_psnr": psnr}}


def test_the_study_picks_the_best_lr_and_every_change_that_beat_it():
    lr = study.lr_rows()
    assert study.best([result("seed", 15), result("lr-3e-4", 17), result("lr-1e-3", 16)], [r.name for r in lr])[
        "name"] == "lr-3e-4"
    rows = study.recipe_rows(lr[1])
    scores = {"seed": 15, "lr-3e-4": 17, "lr-1e-3": 16, "ema": 17.2, "augment": 16.9, "batch-32": 17.5,
              "batch-128": 17.3, "l1+grad": 17.1}
    recipe = study.pick_recipe([result(k, v) for k, v in scores.items()], rows)
    # batch 32 beats batch 128; the structure loss beat the base; augmentation lost
    assert recipe == {"model": "dcae-s48", "lr": 3e-4, "warmup": study.WARMUP, "ema": study.EMA, "batch_size": 32,
                      "loss": "l1+grad"}
    command = study.train_command(study.layout_rows(lr[1])[1], study.Path("runs/x"), "data/corpus", False)
    assert command[command.index("--model") + 1] == "dcae-s48-f16c16" and command.count("--ema") == 1


def test_latent_stats_are_stored_without_touching_the_weights(tiny_data, tmp_path):
    from tessera.training.latent_stats import add_latent_stats
    from tessera.training.dataset import TileData

    torch.manual_seed(0)
    path = tmp_path / "t48.safetensors"
    model.save_checkpoint(model.build("dcae-t48"), path, {"metrics": {"val_l1": 0.1}}, torch.float16)
    before = model.read_header(path)
    stats = add_latent_stats(path, tiny_data)
    net, info = model.load_checkpoint(path)
    assert info["weights_sha256"] == before["weights_sha256"] and info["stored_dtype"] == "float16"
    assert info["training"]["metrics"] == {"val_l1": 0.1} and info["training"]["latent_stats"] == stats
    assert net.latent_stats == stats
    train = torch.from_numpy(TileData.open(tiny_data).split("train")).permute(0, 3, 1, 2).float().div(255)
    with torch.no_grad():
        z = net.encode(train).double()
    assert stats["mean"] == pytest.approx(z.mean().item(), rel=1e-6, abs=1e-9)
    assert stats["std"] == pytest.approx(z.std(unbiased=False).item(), rel=1e-6)
    assert stats["scaling_factor"] == pytest.approx(1 / stats["std"]) and len(stats["channel_std"]) == 64


def test_to_diffusers_takes_the_measured_scaling_factor(tmp_path):
    pytest.importorskip("diffusers")
    from tessera.model.interop import to_diffusers

    net = model.build("dcae-t48")
    net.latent_stats = {"scaling_factor": 2.5}
    assert to_diffusers(net).config.scaling_factor == 2.5


def test_rgba_loss_ignores_the_colour_of_invisible_pixels():
    from tessera.training.losses import rgba_loss

    x = torch.rand(2, 4, 32, 32)
    x[:, 3] = 0
    x[:, 3, :16] = 1  # the top half is covered
    other = x.clone()
    other[:, :3, 16:] = torch.rand(2, 3, 16, 32)  # different colour where nothing is visible
    assert rgba_loss(other, x).item() == pytest.approx(0.0, abs=1e-7)
    other[:, :3, :16] += 0.1
    assert rgba_loss(other, x).item() == pytest.approx(0.1 * 3 * 16 * 32 / (3 * 32 * 32), rel=1e-4)


def test_alpha_weight_scales_only_the_alpha_error():
    from tessera.training.losses import rgba_loss

    x = torch.rand(2, 4, 32, 32)
    x[:, 3] = 1
    off_colour, off_alpha = x.clone(), x.clone()
    off_colour[:, :3] -= 0.2
    off_alpha[:, 3] -= 0.2
    assert rgba_loss(off_colour, x, alpha_weight=4).item() == pytest.approx(0.2, rel=1e-4)
    assert rgba_loss(off_alpha, x, alpha_weight=4).item() == pytest.approx(4 * 0.2, rel=1e-4)
    assert rgba_loss(off_alpha, x).item() == pytest.approx(0.2, rel=1e-4)
    with pytest.raises(ValueError, match="--alpha-weight"):
        TrainConfig(model="dcae-s64-f8c4-rgba", alpha_weight=0)


def test_rgba_metrics_give_alpha_iou_and_colour_psnr_over_covered_pixels():
    from tessera.training.metrics import SUMS, reconstruction_sums, rgba_metrics_from_sums

    tiles = torch.zeros(1, 4, 32, 32, dtype=torch.uint8)
    tiles[:, 3, :16] = 255  # target covers the top half
    tiles[:, :3] = 100

    class Shifted(nn.Module):  # covers the top 24 rows; colour off by 51/255 = 0.2 everywhere
        def forward(self, x):
            out = x.clone()
            out[:, 3] = 0
            out[:, 3, :24] = 1
            out[:, :3] += 0.2
            return out

    m = rgba_metrics_from_sums(*reconstruction_sums(Shifted(), tiles, rgba=True).tolist()[SUMS:])
    assert m["alpha_iou"] == pytest.approx(16 / 24)
    assert m["covered_psnr"] == pytest.approx(10 * math.log10(1 / 0.04), rel=1e-3)


def test_an_rgba_model_trains_on_the_rgba_tiles_with_alpha_metrics(sheet_folder, tmp_path):
    from tessera.training.corpus import SourceSheet, Tileset, split_sources, write_corpus
    from tessera.training.data import folder_sheets

    sheets = tuple(SourceSheet(s.name, s.path, -1) for s in folder_sheets(sheet_folder))
    write_corpus(split_sources([Tileset("art", "test", "art", "CC0-1.0", sheets)]), tmp_path / "corpus", [])
    spec = tiny_rgba()
    out = tmp_path / "rgba"
    summary = train(tiny_config(tmp_path / "corpus", out, model=spec, max_inputs=128, eval_every=64, alpha_weight=2.5))
    assert summary["stopped"] == "done"
    net, info = model.load_checkpoint(out / "last.safetensors")
    assert net.config.in_channels == 4 and info["compression_ratio"] == 64
    record = info["training"]
    assert record["channels"] == "RGBA" and record["loss"] == "rgba (coverage-weighted L1 + 2.5 x alpha L1)"
    assert record["alpha_weight"] == 2.5
    assert 0 <= record["metrics"]["val_alpha_iou"] <= 1 and "val_covered_psnr" in record["metrics"]
    with open(out / "val.csv", newline="") as handle:
        assert {"val_alpha_iou", "val_covered_psnr"} <= set(next(csv.DictReader(handle)))

    from tessera.training.evaluate import evaluate_checkpoints, markdown_table
    from tessera.training.plots import plot_reconstructions

    report = evaluate_checkpoints([str(out / "last.safetensors")], tmp_path / "corpus")
    (row,) = report["rows"]
    assert row["channels"] == "RGBA" and 0 <= row["sources"]["art"]["alpha_iou"] <= 1
    assert row["val_alpha_iou"] == pytest.approx(record["metrics"]["val_alpha_iou"], abs=1e-6)
    assert "alpha IoU" in markdown_table(report)
    assert plot_reconstructions([out], tmp_path / "corpus", tmp_path / "grid.png", count=8).stat().st_size > 0

    from tessera.training.latent_stats import add_latent_stats

    stats = add_latent_stats(out / "last.safetensors", tmp_path / "corpus")  # over the RGBA training tiles
    assert len(stats["channel_std"]) == 64 and stats["std"] > 0


def test_transparent_pixels_show_the_checkerboard():
    from tessera.training.plots import on_checkerboard

    rgba = np.zeros((1, 8, 8, 4), np.uint8)
    rgba[0, :, 4:] = (255, 0, 0, 255)  # right half opaque red
    rgba[0, :, :4, :3] = 255  # left half transparent white: never shown
    shown = on_checkerboard(rgba)
    assert shown.shape == (1, 8, 8, 3)
    assert (shown[0, :, 4:] == (255, 0, 0)).all()
    assert {tuple(shown[0, y, x]) for y in range(8) for x in range(4)} == {(204, 204, 204), (153, 153, 153)}


def test_an_rgba_model_needs_rgba_tiles(tiny_data, tmp_path):
    spec = tiny_rgba()
    with pytest.raises(TrainingError, match="holds no RGBA tiles"):
        train(tiny_config(tiny_data, tmp_path / "x", model=spec))
