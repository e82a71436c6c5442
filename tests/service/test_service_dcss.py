"""DCSS validation tiles through encode and decode give the model's own reconstruction quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, load_npy, npy
from tessera.testing.serve import ROOT
from tessera.service.runtime.settings import DEFAULT_MODEL

DATA = ROOT / "data" / "dcss"
BUNDLED = ROOT / "checkpoints" / f"{DEFAULT_MODEL}.safetensors"
TILES = 256  # a fixed slice of the validation split keeps the test fast


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 images on the [0, 1] scale."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2) / 255.0**2
    return 10 * math.log10(1.0 / mse)


def test_dcss_round_trip_matches_in_process_psnr(checkpoint_dir):
    if not (DATA / "manifest.json").is_file():
        pytest.skip(f"no DCSS data set at {DATA}; build it with `tessera data dcss --out data/dcss`")
    import torch

    from tessera import model
    from tessera.training.dataset import TileData
    from tessera.training.metrics import evaluate_reconstruction

    checkpoint = BUNDLED if BUNDLED.is_file() else checkpoint_dir / "tiny.safetensors"
    tiles = TileData.open(DATA).split("val")[:TILES]

    module, _ = model.load_checkpoint(checkpoint)
    # the model's own PSNR as training reports it: raw (unclamped) decoder output, float
    own = evaluate_reconstruction(module, torch.from_numpy(tiles).permute(0, 3, 1, 2))["val_psnr"]
    # the same model call through the service's conversions: clamped, rounded to uint8
    with torch.inference_mode():
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        y = module(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    own_uint8 = psnr(tiles, np.round(y * 255).astype(np.uint8))

    with serving(checkpoint.parent, checkpoints=(checkpoint,), max_batch_tiles=64, cache_max_bytes=0) as client:
        r = client.post("/v1/encode", content=npy(tiles), headers={"Content-Type": NPY, "Accept": NPY})
        assert r.status_code == 200, r.text
        r = client.post("/v1/decode", content=r.content, headers={"Content-Type": NPY, "Accept": NPY})
        assert r.status_code == 200, r.text
        served = psnr(tiles, load_npy(r.content))

    print(f"{checkpoint.name}: served {served:.3f} dB; in-process {own_uint8:.3f} dB (uint8), {own:.3f} dB (training's)")
    assert abs(served - own_uint8) < 0.01, (served, own_uint8, checkpoint.name)
    # clamping to [0, 1] only removes error; rounding to uint8 costs a few hundredths of a dB
    assert served > own - 0.05, (served, own, checkpoint.name)
