"""Bad checkpoints through ``tessera serve``: refused at start with one line naming the file and
the problem (exit 2), or skipped and listed when TESSERA_SKIP_BAD_CHECKPOINTS is set. A pickle is
never unpickled: the ones here would create a file if it were."""

from __future__ import annotations

import json
import struct
import subprocess

import httpx
import pytest
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from tessera.testing.checkpoints import save_checkpoint
from reliability_bodies import Tripwire
from tessera.testing.ports import free_port
from tessera.testing.serve import CPU, ROOT, environment, local_server, tessera_command


def truncated(good: bytes) -> bytes:
    return good[: len(good) // 2]


def not_safetensors(good: bytes) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + good[100:400]


def mismatched(good: bytes) -> bytes:
    """The same tensors under a config asking for 32 latent channels instead of 64."""
    (length,) = struct.unpack("<Q", good[:8])
    metadata = json.loads(good[8 : 8 + length])["__metadata__"]
    document = json.loads(metadata["tessera"])
    config = document["config"]
    config["latent_channels"] = config["encoder"]["latent_channels"] = config["decoder"]["latent_channels"] = 32
    return save_tensors(load_tensors(good), metadata={**metadata, "tessera": json.dumps(document)})


def pickle_bytes(marker) -> bytes:
    path = marker.with_suffix(".tmp")
    torch.save({"state_dict": {}, "hook": Tripwire(marker)}, path)
    return path.read_bytes()


CASES = {  # name -> (file name, make bytes from the good file and the tripwire marker, expected problem)
    "truncated": ("tiny.safetensors", lambda good, marker: truncated(good), "truncated"),
    "not-safetensors": ("tiny.safetensors", lambda good, marker: not_safetensors(good), "not a safetensors file"),
    "pickle-pt": ("tiny.pt", lambda good, marker: pickle_bytes(marker), "never unpickles"),
    "pickle-renamed": ("tiny.safetensors", lambda good, marker: pickle_bytes(marker), "never unpickles"),
    "config-mismatch": ("tiny.safetensors", lambda good, marker: mismatched(good), "config does not match the weights"),
}


@pytest.fixture(scope="module")
def good_bytes(checkpoint_dir) -> bytes:
    return (checkpoint_dir / "tiny.safetensors").read_bytes()


def serve(checkpoints, **env: str) -> subprocess.CompletedProcess:
    """``tessera serve`` that is expected not to start: its exit code and output."""
    cmd = [*tessera_command(), "serve", "--port", str(free_port()), "--checkpoints", str(checkpoints)]
    return subprocess.run(cmd, cwd=ROOT, env=environment({**CPU, **env}), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case, named", [*((case, False) for case in sorted(CASES)), ("pickle-pt", True)],
                         ids=[*(f"{case}-in-folder" for case in sorted(CASES)), "pickle-pt-named"])
def test_bad_checkpoint_refuses_to_start_with_one_line(case, named, good_bytes, tmp_path):
    file_name, make, problem = CASES[case]
    marker = tmp_path / "unpickled"
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / file_name
    path.write_bytes(make(good_bytes, marker))
    result = serve(path if named else folder)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("tessera serve: checkpoint ") and str(path) in lines[0] and problem in lines[0], lines[0]
    assert not marker.exists(), "the checkpoint was unpickled"


@pytest.mark.slow
def test_skip_bad_checkpoints_serves_the_rest_and_lists_them(good_bytes, tmp_path, measurements):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "good.safetensors")
    marker = tmp_path / "unpickled"
    for case, (file_name, make, _) in CASES.items():
        stem, suffix = file_name.split(".")
        (folder / f"{case}.{suffix}").write_bytes(make(good_bytes, marker))
    server = local_server(folder, tmp_path / "server.log", TESSERA_SKIP_BAD_CHECKPOINTS="true")
    try:
        listing = httpx.get(server.url + "/v1/models", timeout=10).json()
    finally:
        assert server.stop() == 0
    assert [m["name"] for m in listing["models"]] == ["good"] and listing["default"] == "good"
    skipped = {s["file"]: s["reason"] for s in listing["skipped"]}
    assert set(skipped) == {f"{case}.{CASES[case][0].split('.')[1]}" for case in CASES}
    for case, (file_name, _, problem) in CASES.items():
        assert problem in skipped[f"{case}.{file_name.split('.')[1]}"]
    assert not any("/" in s["file"] for s in listing["skipped"])  # file names only, no server paths
    assert "skipping" in server.log.read_text()
    assert not marker.exists()
    measurements["checkpoints"] = {"refused_cases": sorted(CASES), "skipped_listed": sorted(skipped)}


def test_all_bad_with_skip_still_refuses(good_bytes, tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / "broken.safetensors").write_bytes(truncated(good_bytes))
    result = serve(folder, TESSERA_SKIP_BAD_CHECKPOINTS="true")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("tessera serve: no checkpoint could be loaded (broken.safetensors: truncated")


def test_unknown_default_model_that_was_skipped_is_named(good_bytes, tmp_path):
    folder = tmp_path / "checkpoints"
    save_checkpoint(folder / "good.safetensors")
    (folder / "wanted.safetensors").write_bytes(truncated(good_bytes))
    result = serve(folder, TESSERA_SKIP_BAD_CHECKPOINTS="true", TESSERA_DEFAULT_MODEL="wanted")
    assert result.returncode == 2
    assert "TESSERA_DEFAULT_MODEL='wanted' cannot be loaded: truncated" in result.stderr.strip().splitlines()[-1]
