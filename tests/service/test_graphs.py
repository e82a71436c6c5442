"""Model calls as TorchScript graphs (TESSERA_GRAPH=trace, the default): same answers as eager,
and a model that cannot be traced faithfully runs eager instead."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from tessera import model
from tessera.service.batching.graphs import make_calls
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, random_tiles

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"


def _load(name: str):
    module, _ = model.load_checkpoint(CHECKPOINTS / f"{name}.safetensors")
    return module.eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in CHECKPOINTS.glob("*.safetensors")))
def test_traced_calls_match_eager_on_the_bundled_models(name):
    module = _load(name)
    traced_encode, traced_decode, graph = make_calls(module, "cpu", torch.float32, "trace", name)
    eager_encode, eager_decode, eager = make_calls(module, "cpu", torch.float32, "eager", name)
    assert (graph, eager) == ("trace", "eager")
    channels = module.config.in_channels  # 3, or 4 for the RGBA model
    for n in (1, 5, 64):
        tiles = random_tiles(n, seed=n, channels=channels)
        latents = traced_encode(tiles)
        assert latents.dtype == np.float32 and latents.shape == (n, *module.latent_shape)
        np.testing.assert_allclose(latents, eager_encode(tiles), rtol=1e-4, atol=1e-5)
        back, eager_back = traced_decode(latents), eager_decode(latents)
        assert back.dtype == np.uint8 and back.shape == (n, 32, 32, channels)
        assert np.abs(back.astype(int) - eager_back.astype(int)).max() <= 1  # one rounding step at most


class BatchDependent(torch.nn.Module):
    """A stand-in whose output depends on the batch size through Python control flow: a trace
    bakes in the traced batch size's branch, so the graph disagrees with eager elsewhere."""

    latent_shape = (3, 1, 1)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        z = x.mean(dim=(2, 3), keepdim=True)
        return z * 2 if x.shape[0] == 4 else z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z.expand(-1, 3, 32, 32)


def test_a_model_the_trace_gets_wrong_runs_eager(caplog):
    module = BatchDependent()
    with caplog.at_level(logging.WARNING, logger="tessera.service.batching.graphs"):
        encode, _, graph = make_calls(module, "cpu", torch.float32, "trace", "odd")
    assert graph == "eager"
    assert "odd runs eager" in caplog.text and "encode" in caplog.text
    tiles = random_tiles(4)
    expected = tiles.astype(np.float32).mean(axis=(1, 2)) / 255 * 2  # eager semantics at batch 4
    np.testing.assert_allclose(encode(tiles)[:, :, 0, 0], expected, rtol=1e-5)


@pytest.mark.parametrize("graph", ["trace", "eager"])
def test_the_service_serves_either_way_with_the_same_latents(checkpoint_dir, graph):
    tiles = random_tiles(6, seed=3)
    body = io.BytesIO()
    np.save(body, tiles)
    module, _ = model.load_checkpoint(checkpoint_dir / "tiny.safetensors")
    with torch.inference_mode():
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255)
        expected = module.eval().encode(x).numpy()
    with serving(checkpoint_dir, graph=graph) as client:
        (info,) = client.get("/v1/models").json()["models"]
        assert (info["graph"], info["device"], info["dtype"]) == (graph, "cpu", "float32")
        answer = client.post("/v1/encode", content=body.getvalue(), headers={"Content-Type": NPY, "Accept": NPY})
        assert answer.status_code == 200, answer.text
    np.testing.assert_allclose(np.load(io.BytesIO(answer.content)), expected, rtol=1e-4, atol=1e-5)
