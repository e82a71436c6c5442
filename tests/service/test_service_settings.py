"""Settings from the environment, checkpoint discovery and the `tessera serve` command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from tessera.cli.main import build_parser
from tessera.service.batching.registry import RegistryError, choose_default, find_checkpoints
from tessera.service.runtime.settings import DEFAULT_MODEL, Settings
from tessera.testing.docs import generated_table, page
from tessera.testing.serve import ROOT


def test_defaults(monkeypatch):
    for name in list(os.environ):
        if name.startswith("TESSERA_"):
            monkeypatch.delenv(name)
    s = Settings()
    assert s.checkpoints == (Path("checkpoints"),) and s.default_model is None
    assert (s.device, s.cuda_dtype, s.max_batch_tiles, s.max_wait_ms) == ("auto", "fp32", 64, 5.0)
    assert s.redis_url is None and s.api_keys is None and s.metrics_public is True


def test_environment_overrides(monkeypatch):
    monkeypatch.setenv("TESSERA_CHECKPOINTS", "a, b/c.safetensors")
    monkeypatch.setenv("TESSERA_MAX_BATCH_TILES", "128")
    monkeypatch.setenv("TESSERA_MAX_WAIT_MS", "2.5")
    monkeypatch.setenv("TESSERA_DEVICE", "cuda:1")
    monkeypatch.setenv("TESSERA_CUDA_DTYPE", "bf16")
    s = Settings()
    assert s.checkpoints == (Path("a"), Path("b/c.safetensors"))
    assert s.max_batch_tiles == 128 and s.max_wait_s == 0.0025 and s.device == "cuda:1" and s.cuda_dtype == "bf16"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"cuda_dtype": "fp8"}, "cuda_dtype"),
        ({"max_batch_tiles": 0}, "max_batch_tiles"),
        ({"max_tiles_per_request": 5000}, "exceeds max_queue_tiles"),
        ({"checkpoints": ""}, "no checkpoint path"),
    ],
)
def test_invalid_settings_say_what_is_wrong(overrides, message):
    with pytest.raises(ValidationError, match=message):
        Settings(**overrides)


def test_find_checkpoints(tmp_path, checkpoint_dir):
    tiny = checkpoint_dir / "tiny.safetensors"
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(tiny, other / "second.safetensors")
    assert list(find_checkpoints((checkpoint_dir, other))) == ["second", "tiny"]
    assert find_checkpoints((tiny,)) == {"tiny": tiny}
    shutil.copy(tiny, other / "tiny.safetensors")
    with pytest.raises(RegistryError, match="two checkpoints are named 'tiny'"):
        find_checkpoints((checkpoint_dir, other))
    with pytest.raises(RegistryError, match="does not exist"):
        find_checkpoints((tmp_path / "missing",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(RegistryError, match="no .safetensors checkpoints"):
        find_checkpoints((tmp_path / "empty",))


def test_default_model_choice():
    assert choose_default(Settings(), ["baseline", "dcae-s12-f8c16", DEFAULT_MODEL]) == DEFAULT_MODEL
    assert choose_default(Settings(), ["b", "a"]) == "b"
    assert choose_default(Settings(default_model="a"), ["b", "a"]) == "a"
    with pytest.raises(RegistryError, match="TESSERA_DEFAULT_MODEL='x'"):
        choose_default(Settings(default_model="x"), ["a"])


def test_serve_is_registered_with_its_flags():
    args = build_parser(["tessera.service.runtime.cli"]).parse_args(["serve", "--port", "9000", "--max-batch-tiles", "8", "--checkpoints", "x"])
    assert (args.port, args.max_batch_tiles, args.checkpoints, args.host) == ("9000", "8", "x", None)
    assert callable(args.func)


def test_every_setting_is_a_flag_whose_help_comes_from_the_field():
    import argparse

    from tessera.service.runtime.cli import flags, register

    commands = argparse.ArgumentParser().add_subparsers()
    register(commands)
    by_dest = {action.dest: action for action in commands.choices["serve"]._actions}
    parser = build_parser(["tessera.service.runtime.cli"])
    for name, field in Settings.model_fields.items():
        assert name in by_dest, f"--{name.replace('_', '-')} is missing"
        assert by_dest[name].help.startswith(field.description) and f"TESSERA_{name.upper()}" in by_dest[name].help
    assert "default: 1024" in flags()["max_tiles_per_request"] and "default: true" in flags()["batch_close_early"]
    given = parser.parse_args(["serve", "--max-tiles-per-request", "10", "--batch-close-early", "false"])
    settings = Settings(**{k: getattr(given, k) for k in flags() if getattr(given, k) is not None})
    assert (settings.max_tiles_per_request, settings.batch_close_early) == (10, False)


def test_serve_refuses_bad_settings_in_one_line():
    result = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "serve", "--max-batch-tiles", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0 and "max_batch_tiles" in result.stderr


def test_serve_refuses_an_unreadable_key_file_in_one_line(tmp_path, checkpoint_dir):
    result = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "serve", "--checkpoints", str(checkpoint_dir), "--port", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "TESSERA_API_KEYS": f"@{tmp_path / 'keys'}", "TESSERA_TORCH_THREADS": "1"},
    )
    assert result.returncode == 2 and result.stderr.strip().count("\n") == 0, result.stderr
    assert str(tmp_path / "keys") in result.stderr


@pytest.mark.parametrize("content", [b"garbage", None])
def test_serve_refuses_bad_checkpoints_in_one_line(tmp_path, content):
    folder = tmp_path / "checkpoints"
    if content is not None:
        folder.mkdir()
        (folder / "broken.safetensors").write_bytes(content)
    result = subprocess.run(
        [sys.executable, "-m", "tessera.cli.main", "serve", "--checkpoints", str(folder), "--port", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert line.count("\n") == 0 and "Traceback" not in line
    assert (str(folder / "broken.safetensors") if content else str(folder)) in line


def test_the_settings_table_in_the_docs_is_made_from_the_fields():
    """docs/operations.md shows each setting's default and meaning as the field declares them
    (``markdown_table``), so neither is written a second time by hand."""
    from tessera.service.runtime.settings import markdown_table

    assert generated_table(page("operations.md"), "settings") == markdown_table(), "rerun: python -m tessera.service.runtime.settings (and paste its table)"
