"""`tessera export onnx`: onnxruntime gives what PyTorch gives (fp32, <= 1e-4), at any batch size,
and each file says which weights and latent it holds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tessera import model
from tessera.cli.main import main

ort = pytest.importorskip("onnxruntime", reason="the 'export' extra is not installed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    torch.manual_seed(0)
    net = model.build("dcae-s48-f16c16")
    model.save_checkpoint(net, folder / "spatial.safetensors")
    assert main(["export", "onnx", str(folder / "spatial.safetensors"), "--part", "both"]) == 0
    return folder, model.load_checkpoint(folder / "spatial.safetensors")


def test_export_is_quiet_unless_asked(tmp_path):
    import subprocess
    import sys

    checkpoint = tmp_path / "quiet.safetensors"
    model.save_checkpoint(model.build("dcae-t48"), checkpoint)
    done = subprocess.run([sys.executable, "-m", "tessera.cli.main", "export", "onnx", str(checkpoint), "--part", "decoder"],
                          capture_output=True, text=True, check=True)
    assert done.stdout == f"wrote {tmp_path / 'quiet.decoder.onnx'}\n" and done.stderr == ""


def session(path):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 5, 64])
def test_onnxruntime_matches_pytorch(exported, batch):
    folder, (net, _) = exported
    tiles = torch.rand(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    with torch.no_grad():
        latents = net.encode(tiles)
        decoded = net.decode(latents).clamp(0, 1)
    got_latents = session(folder / "spatial.encoder.onnx").run(None, {"tiles": tiles.numpy()})[0]
    np.testing.assert_allclose(got_latents, latents.numpy(), rtol=0, atol=1e-4)
    got_tiles = session(folder / "spatial.decoder.onnx").run(None, {"latents": latents.numpy()})[0]
    assert got_tiles.shape == (batch, 3, 32, 32)
    np.testing.assert_allclose(got_tiles, decoded.numpy(), rtol=0, atol=1e-4)
    assert got_tiles.min() >= 0 and got_tiles.max() <= 1


def test_the_bundled_default_model_gives_finite_values_where_attention_sums_to_zero(tmp_path):
    """A black tile makes a LiteMLA normaliser sum to zero; only its eps keeps the division finite
    (some real tiles' latents do the same in the decoder)."""
    from tessera.service.runtime.settings import DEFAULT_MODEL
    from tessera.testing.serve import ROOT

    checkpoint = ROOT / "checkpoints" / f"{DEFAULT_MODEL}.safetensors"
    assert main(["export", "onnx", str(checkpoint), "--part", "both", "--out", str(tmp_path / "m")]) == 0
    net, _ = model.load_checkpoint(checkpoint)
    tiles = torch.cat([torch.zeros(1, 3, 32, 32), torch.ones(1, 3, 32, 32),
                       torch.rand(30, 3, 32, 32, generator=torch.Generator().manual_seed(1))])
    dcss = ROOT / "data" / "dcss" / "manifest.json"
    if dcss.is_file():  # real tiles, some of whose latents zero a decoder normaliser
        from tessera.training.dataset import TileData

        tiles = torch.cat([tiles, torch.from_numpy(TileData.open(dcss.parent).split("val")).permute(0, 3, 1, 2) / 255])
    with torch.no_grad():
        latents = net.encode(tiles)
        decoded = net.decode(latents).clamp(0, 1)
    got_latents = session(tmp_path / "m.encoder.onnx").run(None, {"tiles": tiles.numpy()})[0]
    assert np.isfinite(got_latents).all()
    np.testing.assert_allclose(got_latents, latents.numpy(), rtol=0, atol=1e-4)
    got_tiles = session(tmp_path / "m.decoder.onnx").run(None, {"latents": latents.numpy()})[0]
    assert np.isfinite(got_tiles).all()
    np.testing.assert_allclose(got_tiles, decoded.numpy(), rtol=0, atol=1e-4)


def test_each_file_carries_its_metadata(exported):
    folder, (net, info) = exported
    for part in ("encoder", "decoder"):
        meta = session(folder / f"spatial.{part}.onnx").get_modelmeta().custom_metadata_map
        assert meta["tessera_part"] == part
        assert json.loads(meta["latent_shape"]) == [16, 2, 2] and meta["compression_ratio"] == "48"
        assert meta["channels"] == "RGB" and meta["weights_sha256"] == info["weights_sha256"]
        assert meta["checkpoint"] == "spatial.safetensors"


def test_a_bad_checkpoint_is_one_line(tmp_path, capsys):
    (tmp_path / "bad.safetensors").write_bytes(b"not a checkpoint")
    assert main(["export", "onnx", str(tmp_path / "bad.safetensors")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tessera export onnx: error:") and err.count("\n") == 1
