"""Checkpoints round-trip exactly (fp32) or closely (fp16), and bad files fail with one clear error."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from tessera import model
from tessera.model import CheckpointError, load_checkpoint, read_header, save_checkpoint


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    net = model.build("dcae-t48")
    net.train()
    with torch.no_grad():
        net(torch.rand(8, 3, 32, 32))  # BatchNorm running statistics away from their defaults
    return net.eval()


@pytest.fixture
def tiles():
    return torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_fp32_round_trip_is_identical(tmp_path, tiny, tiles):
    path = tmp_path / "t48.safetensors"
    metadata = {"metrics": {"val_l1": 0.05, "val_mse": 0.01, "val_psnr": 21.5}, "inputs_seen": 1000}
    saved = save_checkpoint(tiny, path, metadata)
    loaded, info = load_checkpoint(path)
    assert not loaded.training
    assert info == saved
    assert info["format_version"] == 1 and info["spec"] == "dcae-t48" and info["arch"] == "dcae"
    assert info["latent_shape"] == [64, 1, 1] and info["compression_ratio"] == 48.0
    assert info["params"] == tiny.num_params and info["stored_dtype"] == "float32"
    assert info["training"] == metadata and len(info["weights_sha256"]) == 64
    assert loaded.spec == "dcae-t48" and loaded.config == tiny.config
    with torch.no_grad():
        assert torch.equal(loaded.encode(tiles), tiny.encode(tiles))
        assert torch.equal(loaded(tiles), tiny(tiles))
    assert read_header(path) == info


def test_fp16_storage_is_half_size_and_close(tmp_path, tiny, tiles):
    full, half = tmp_path / "full.safetensors", tmp_path / "half.safetensors"
    save_checkpoint(tiny, full)
    info = save_checkpoint(tiny, half, dtype=torch.float16)
    assert info["stored_dtype"] == "float16"
    assert half.stat().st_size < 0.55 * full.stat().st_size
    stored = load_file(half)
    assert stored["encoder.conv_out.weight"].dtype == torch.float16
    loaded, _ = load_checkpoint(half)
    assert loaded.encoder.conv_out.weight.dtype == torch.float32  # computes in fp32 unless asked
    with torch.no_grad():
        torch.testing.assert_close(loaded(tiles), tiny(tiles), atol=2e-2, rtol=2e-2)
    as_half, _ = load_checkpoint(half, dtype=torch.float16)
    assert as_half.encoder.conv_out.weight.dtype == torch.float16


def test_baseline_round_trip(tmp_path, tiles):
    net = model.build("baseline").eval()
    path = tmp_path / "baseline.safetensors"
    save_checkpoint(net, path, dtype=torch.float16)
    loaded, info = load_checkpoint(path)
    assert info["arch"] == "baseline" and info["latent_shape"] == [128] and info["params"] == 5_053_491
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(tiles), net.encode(tiles), atol=1e-2, rtol=1e-2)


def test_dotlist_spec_round_trip(tmp_path):
    net = model.build("latent_channels=32 encoder.width_list=[8,32] encoder.depth_list=[1,1] "
                      "decoder.width_list=[8,32] decoder.depth_list=[1,1]")
    path = tmp_path / "custom.safetensors"
    save_checkpoint(net, path)
    loaded, info = load_checkpoint(path)
    assert loaded.config == net.config and loaded.spec == net.spec == info["spec"]


def test_weights_sha256_identifies_the_weights(tmp_path, tiny):
    a = save_checkpoint(tiny, tmp_path / "a.safetensors")
    b = save_checkpoint(tiny, tmp_path / "b.safetensors", {"note": "other metadata"})
    c = save_checkpoint(tiny, tmp_path / "c.safetensors", dtype=torch.float16)
    assert a["weights_sha256"] == b["weights_sha256"] != c["weights_sha256"]


def test_metadata_must_be_json(tmp_path, tiny):
    with pytest.raises(ValueError, match="plain JSON"):
        save_checkpoint(tiny, tmp_path / "x.safetensors", {"when": object()})
    with pytest.raises(ValueError, match="plain JSON"):
        save_checkpoint(tiny, tmp_path / "x.safetensors", {"val_l1": float("nan")})
    assert not (tmp_path / "x.safetensors").exists()


def _expect(path, needle):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and needle in message, message
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("keep", [0.999, 0.5, 0.001])
def test_truncated_file(tmp_path, tiny, keep):
    path = tmp_path / "t.safetensors"
    save_checkpoint(tiny, path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    _expect(path, "truncated")


def test_file_of_a_few_bytes(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x01\x02")
    _expect(path, "not a safetensors file")


@pytest.mark.parametrize("payload", [
    b"\x89PNG\r\n\x1a\n" + bytes(100),
    pickle.dumps({"state_dict": [1, 2, 3]}),
    b"hello, world " * 20,
])
def test_not_safetensors(tmp_path, payload):
    path = tmp_path / "other.safetensors"
    path.write_bytes(payload)
    _expect(path, "not a safetensors file")


def test_torch_pickle_is_never_unpickled(tmp_path, tiny, monkeypatch):
    path = tmp_path / "model.pt"
    torch.save(tiny.state_dict(), path)
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("unpickled"))
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    _expect(path, "not a safetensors file")


def test_safetensors_without_tessera_metadata(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(3)}, path)
    _expect(path, "not a Tessera checkpoint")


def _rewrite_header(path, edit):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    doc = json.loads(header["__metadata__"]["tessera"])
    edit(doc)
    tensors = load_file(path)
    save_file(tensors, path, metadata={"tessera": json.dumps(doc), "format": "pt"})


def test_config_that_does_not_match_the_weights(tmp_path, tiny):
    path = tmp_path / "mismatch.safetensors"
    save_checkpoint(tiny, path)
    _rewrite_header(path, lambda doc: doc["config"]["encoder"].update(width_list=[8, 16, 32, 64, 64, 64]))
    _expect(path, "config does not match the weights")


def test_config_of_another_architecture(tmp_path, tiny):
    path = tmp_path / "arch.safetensors"
    save_checkpoint(tiny, path)
    _rewrite_header(path, lambda doc: doc.update(arch="baseline", config={}))
    _expect(path, "config does not match the weights")


def test_invalid_config(tmp_path, tiny):
    path = tmp_path / "bad-config.safetensors"
    save_checkpoint(tiny, path)
    _rewrite_header(path, lambda doc: doc["config"]["decoder"].update(norm="groupnorm"))
    _expect(path, "unknown decoder norm 'groupnorm'")


def test_corrupted_weights_fail_their_hash(tmp_path, tiny):
    path = tmp_path / "flipped.safetensors"
    save_checkpoint(tiny, path)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    _expect(path, "weights_sha256")


def test_unsupported_format_version(tmp_path, tiny):
    path = tmp_path / "future.safetensors"
    save_checkpoint(tiny, path)
    _rewrite_header(path, lambda doc: doc.update(format_version=99))
    _expect(path, "format_version 99")


def test_missing_file(tmp_path):
    _expect(tmp_path / "nope.safetensors", "no such file")


def test_wrapped_module_is_saved_as_the_network(tmp_path, tiny):
    class Wrapper(torch.nn.Module):  # the shape of DistributedDataParallel: the network under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    info = save_checkpoint(Wrapper(tiny), tmp_path / "w.safetensors")
    assert info["spec"] == "dcae-t48"
    with pytest.raises(TypeError, match="expected a network from model.build"):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "x.safetensors")
