"""`tessera data | train | plot | evaluate` through the real command-line entry point."""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from tessera import model
from tessera.cli.main import main
from tessera.training.dataset import TileData


def run(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_data_folder_prints_counts(capsys, sheet_folder, tmp_path):
    code, out, _ = run(capsys, "data", "folder", str(sheet_folder), "--tile-size", "32", "--out", str(tmp_path / "d"))
    assert code == 0
    assert "183 tiles (" in out and "dropped 6 constant and 3 duplicate" in out
    assert (tmp_path / "d" / "manifest.json").is_file()


@pytest.mark.parametrize("argv, message", [
    (["data", "folder", "/nonexistent/art", "--out", "x"], "data folder /nonexistent/art does not exist"),
    (["train", "--model", "dcae-t48", "--data", "/nonexistent/data", "--out", "x"],
     "data set /nonexistent/data does not exist"),
    (["train"], "--model is required"),
    (["train", "--model", "latent_channels=64", "--max-inputs", "10"], "--out is required"),
    (["train", "--model", "dcae-t48", "--max-inputs", "0", "--out", "x"], "--max-inputs must be at least 1"),
    (["evaluate", "/nonexistent/model.safetensors", "--data", "/nonexistent/data"], "does not exist"),
    (["data", "corpus", "--package", "nethack", "--out", "x"], "'nethack' is not a package of the corpus"),
])
def test_bad_input_is_one_line_and_exit_code_1(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err.startswith(f"tessera {argv[0]}") and message in err
    assert err.count("\n") == 1


def test_train_then_resume_with_the_runs_own_settings(capsys, tiny_data, tmp_path):
    out = tmp_path / "run"
    common = ["--threads", "1", "--no-progress", "--no-tensorboard"]
    code, _, _ = run(capsys, "train", "--model", "dcae-t48", "--data", str(tiny_data), "--out", str(out),
                     "--max-inputs", "256", "--batch-size", "16", "--eval-every", "64", "--stop-after", "64", *common)
    assert code == 0
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", *common)
    assert code == 0, err
    _, info = model.load_checkpoint(out / "last.safetensors")
    record = info["training"]
    assert record["inputs_seen"] == 256 and record["batch_size"] == 16  # settings came from the run
    assert record["command"].startswith("tessera train --model dcae-t48 --data ")
    assert "--stop-after 64" in record["command"]
    assert record["resumed_with"] == [f"tessera train --out {out} --resume --threads 1 --no-tensorboard --no-progress"]
    logged = json.loads((out / "run.json").read_text())  # the run's log says what the checkpoint says
    assert (logged["command"], logged["resumed_with"]) == (record["command"], record["resumed_with"])
    code, _, err = run(capsys, "train", "--out", str(out), "--resume", "--batch-size", "32", *common)
    assert code == 1 and "--batch-size 32 (run has 16)" in err


def test_plot_and_evaluate(capsys, full_run, tiny_data, tmp_path):
    curves, recon = tmp_path / "curves.png", tmp_path / "recon.png"
    code, out, err = run(capsys, "plot", str(full_run), str(full_run / "last.safetensors"), "--data", str(tiny_data),
                         "--curves", str(curves), "--recon", str(recon), "--tiles", "10")
    assert code == 0, err
    assert Image.open(curves).size[0] > 300 and Image.open(recon).size[0] > 300

    report = tmp_path / "eval"
    code, out, err = run(capsys, "evaluate", str(full_run / "best.safetensors"), "--data", str(tiny_data),
                         "--out", str(report), "--batch-size", "16", "--threads", "1")
    assert code == 0, err
    assert "| full (best) | 0.39M | 48 | 64x1x1 |" in out
    rows = json.loads((tmp_path / "eval.json").read_text())["rows"]
    assert set(rows[0]) >= {"params", "compression_ratio", "val_l1", "val_mse", "val_psnr",
                            "encode_tiles_per_s", "decode_tiles_per_s"}
    assert (tmp_path / "eval.md").read_text().startswith("| model |")

    code, out, err = run(capsys, "evaluate", str(full_run / "best.safetensors"), "--data", str(tiny_data),
                         "--out", str(tmp_path / "train"), "--split", "train", "--batch-size", "16", "--threads", "1")
    assert code == 0, err
    on_train = json.loads((tmp_path / "train.json").read_text())
    counts = TileData.open(tiny_data).counts
    assert on_train["split"] == "train" and on_train["data"]["source_counts"] == {"tiny": counts["train"]}
    assert on_train["rows"][0]["val_l1"] != rows[0]["val_l1"]  # other tiles, other numbers
    assert "| train L1 | train PSNR (dB) |" in out and f"Training split of `tiny` ({counts['train']} tiles" in out


def test_plot_needs_a_run_folder_for_curves(capsys, full_run, tmp_path):
    code, _, err = run(capsys, "plot", str(full_run / "best.safetensors"), "--curves", str(tmp_path / "c.png"))
    assert code == 1 and "is a run folder with a val.csv" in err


def test_curves_of_one_validation_source(capsys, full_run, tmp_path):
    """Runs on corpora with other sources compare on a source they share (its val.csv column)."""
    corpus_run = tmp_path / "corpus-run"
    corpus_run.mkdir()
    (corpus_run / "val.csv").write_text("step,inputs,val_psnr,dcss_psnr,cdda-cuteclysm_psnr\n"
                                        "10,320,15.0,14.0,16.0\n20,640,16.0,15.5,16.5\n")
    curves = tmp_path / "dcss.png"
    code, out, err = run(capsys, "plot", str(corpus_run), str(full_run), "--metric", "dcss_psnr", "--curves", str(curves))
    assert code == 0, err  # full_run (one source, no dcss column) is left out
    assert Image.open(curves).size[0] > 300
    for metric, message in (("dcss_sharpness", "unknown metric 'dcss_sharpness'"),
                            ("angband_psnr", "that has angband_psnr")):
        code, _, err = run(capsys, "plot", str(corpus_run), "--metric", metric, "--curves", str(tmp_path / "x.png"))
        assert code == 1 and message in err, err


def test_plot_of_checkpoint_files_alone_draws_only_the_grid(capsys, full_run, tiny_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, "plot", str(full_run / "best.safetensors"), "--data", str(tiny_data),
                         "--recon", "grid.png")
    assert code == 0, err
    assert (tmp_path / "grid.png").is_file() and not (tmp_path / "curves.png").exists() and "curves" not in out


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb (Debian's dpkg)")
def test_data_corpus_builds_the_packages_asked_for_from_a_deb(capsys, tmp_path):
    """One package of the corpus from a .deb on disk: unpacked, cut and described as from apt."""
    root = tmp_path / "pkg"
    graf = root / "usr/share/angband/xtra/graf"
    graf.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (64, 128, 4), dtype=np.uint8)
    pixels[..., 3] = 255
    Image.fromarray(pixels, "RGBA").save(graf / "32x32.png")
    (graf / "graphics.txt").write_text("N:1:Small tiles\nI:16:16:16x16.png\nN:3:Big tiles\nI:32:32:32x32.png\n")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text("Package: angband-data\nVersion: 9.9-1\nArchitecture: all\n"
                                          "Maintainer: Test <test@example.org>\nDescription: fixture\n")
    subprocess.run(["dpkg-deb", "--build", "--root-owner-group", str(root), str(tmp_path / "angband.deb")],
                   check=True, capture_output=True)
    code, out, _ = run(capsys, "data", "corpus", "--package", "angband-data", "--deb", str(tmp_path / "angband.deb"),
                       "--out", str(tmp_path / "corpus"))
    assert code == 0 and "angband: 8 tiles (7 train, 1 val)" in out
    manifest = json.loads((tmp_path / "corpus" / "manifest.json").read_text())
    assert manifest["source"]["packages"] == [{"package": "angband-data", "version": "9.9-1", "license": "CC-BY-3.0",
                                               "tilesets": ["Big tiles"]}]
    assert [s["name"] for s in manifest["sources"]] == ["angband"]
