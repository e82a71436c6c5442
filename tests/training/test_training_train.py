"""Training runs of the tiny preset: checkpoints, exact resume, stops that lose nothing."""

from __future__ import annotations

import csv
import math
import os
import signal

import pytest
import torch
from training_helpers import tiny_config

from tessera import model
import tessera.training.loop as train_module
from tessera.training.config import TrainConfig
from tessera.training.dataset import TileData
from tessera.training.errors import TrainingError
from tessera.training.loop import train


def rows(path, *columns):
    with open(path, newline="") as handle:
        return [tuple(r[c] for c in columns) for r in csv.DictReader(handle)]


def weights_of(path):
    return model.load_checkpoint(path)[1]["weights_sha256"]


def test_a_run_writes_loadable_checkpoints_with_its_record(full_run, tiny_data):
    for name in ("best", "last"):
        module, info = model.load_checkpoint(full_run / f"{name}.safetensors")
        assert info["spec"] == "dcae-t48"
        record = info["training"]
        assert record["checkpoint"] == name
        assert set(record["metrics"]) == {"val_l1", "val_mse", "val_psnr", "val_ssim"}
        assert record["data"]["manifest_sha256"] == TileData.open(tiny_data).manifest_sha256
        assert record["lr"] == 9.375e-5 and record["loss"] == "l1" and record["batch_size"] == 16
        assert "git_commit" in record and "command" in record
        with torch.no_grad():
            assert module(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    last = model.load_checkpoint(full_run / "last.safetensors")[1]["training"]
    assert last["inputs_seen"] == 512 and last["step"] == 32
    val = rows(full_run / "val.csv", "inputs", "val_l1")
    assert [int(i) for i, _ in val] == [128, 256, 384, 512]
    assert float(val[-1][1]) == pytest.approx(last["metrics"]["val_l1"])
    assert float(val[-1][1]) < float(val[0][1])  # it learns
    assert len(rows(full_run / "train.csv", "step")) == 8


def test_resume_continues_exactly_where_the_run_stopped(full_run, tiny_data, tmp_path):
    out = tmp_path / "split"
    first = train(tiny_config(tiny_data, out, stop_after=256))
    assert first["stopped"] == "stop_after" and first["inputs_seen"] == 256
    second = train(tiny_config(tiny_data, out, resume=True))
    assert second["stopped"] == "done" and second["inputs_seen"] == 512
    assert weights_of(out / "last.safetensors") == weights_of(full_run / "last.safetensors")
    assert weights_of(out / "best.safetensors") == weights_of(full_run / "best.safetensors")
    columns = ("step", "inputs", "loss", "lr")
    assert rows(out / "train.csv", *columns) == rows(full_run / "train.csv", *columns)
    assert (out / "val.csv").read_text() == (full_run / "val.csv").read_text()


def test_a_signal_stops_at_a_step_boundary_and_the_resume_loses_nothing(full_run, tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_module.training_loss

    def interrupted(*args):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args)

    monkeypatch.setattr(train_module, "training_loss", interrupted)
    out = tmp_path / "interrupted"
    stopped = train(tiny_config(tiny_data, out))
    assert stopped["stopped"] == "signal" and stopped["step"] == 7
    monkeypatch.setattr(train_module, "training_loss", real)
    train(tiny_config(tiny_data, out, resume=True))
    assert weights_of(out / "last.safetensors") == weights_of(full_run / "last.safetensors")
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the run put the handlers back


def test_nan_loss_stops_with_one_message_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = train_module.training_loss

    def breaks_at_step_11(*args):
        calls["n"] += 1
        loss = real(*args)
        return loss * math.nan if calls["n"] >= 11 else loss

    monkeypatch.setattr(train_module, "training_loss", breaks_at_step_11)
    out = tmp_path / "nan"
    with pytest.raises(TrainingError, match=r"not finite .* step 12 .*last good checkpoint .*kept") as info:
        train(tiny_config(tiny_data, out))
    assert "\n" not in str(info.value)
    # the checkpoint from step 8 (128 inputs) is intact and finite; nothing later overwrote it
    module, meta = model.load_checkpoint(out / "last.safetensors")
    assert meta["training"]["step"] == 8
    assert all(torch.isfinite(p).all() for p in module.parameters())
    monkeypatch.setattr(train_module, "training_loss", real)
    assert train(tiny_config(tiny_data, out, resume=True))["stopped"] == "done"


def test_a_corrupt_resume_state_is_one_clear_error(full_run, tiny_data, tmp_path):
    out = tmp_path / "corrupt"
    out.mkdir()
    state = (full_run / "last.state.pt").read_bytes()
    for damaged in (state[: len(state) // 2], b"garbage", b""):
        (out / "last.state.pt").write_bytes(damaged)
        with pytest.raises(TrainingError, match="is corrupt or not a training state") as info:
            train(tiny_config(tiny_data, out, resume=True))
        assert "\n" not in str(info.value)


def test_resume_refuses_settings_that_change_the_weights(full_run, tiny_data, tmp_path):
    out = tmp_path / "clash"
    train(tiny_config(tiny_data, out, stop_after=64))
    with pytest.raises(TrainingError, match=r"--lr 0.1 \(run has 9.375e-05\)"):
        train(tiny_config(tiny_data, out, resume=True, lr=0.1))
    with pytest.raises(TrainingError, match="already holds a run; pass --resume"):
        train(tiny_config(tiny_data, out))
    with pytest.raises(TrainingError, match="does not exist; start the run without --resume"):
        train(tiny_config(tiny_data, tmp_path / "never", resume=True))


def test_unknown_preset_and_missing_data_are_clear_errors(tiny_data, tmp_path):
    with pytest.raises(TrainingError, match="unknown preset 'dcae-nope'; known:"):
        train(tiny_config(tiny_data, tmp_path / "a", model="dcae-nope"))
    with pytest.raises(ValueError, match="does not exist; build one with `tessera data dcss"):
        train(tiny_config(tmp_path / "no-data", tmp_path / "b"))


def test_baseline_gets_its_own_learning_rate_and_tensorboard_logs(tiny_data, tmp_path):
    out = tmp_path / "baseline"
    summary = train(tiny_config(tiny_data, out, model="baseline", max_inputs=32, eval_every=32, tensorboard=True,
                                checkpoint_dtype="float16"))
    assert summary["stopped"] == "done"
    _, info = model.load_checkpoint(out / "best.safetensors")
    assert info["training"]["lr"] == 3e-4 and info["stored_dtype"] == "float16"
    assert any(p.name.startswith("events.out.tfevents") for p in (out / "tb").iterdir())


def test_a_resumed_run_keeps_its_thread_count(full_run, tiny_data, tmp_path):
    out = tmp_path / "threads"
    train(tiny_config(tiny_data, out, stop_after=256, threads=1))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train(TrainConfig(model=None, out=str(out), resume=True, progress=False), given=frozenset())  # nothing given
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
