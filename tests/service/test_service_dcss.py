"""DCSS validation tiles through encode and decode give the model's own reconstruction quality."""

from __future__ import annotations

import math

import numpy as np
import pytest

from service_helpers import NPY, ROOT, load_npy, npy, serving

DATA = ROOT / "data" / "dcss"
BUNDLED = ROOT / "checkpoints" / "dcae-s48.safetensors"
TILES = 256  # a fixed slice of the validation split keeps the test fast


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of two uint8 or [0, 1] float arrays on the [0, 1] scale."""
    scale = 255.0 if a.dtype == np.uint8 else 1.0
    mse = np.mean((a.astype(np.float64) / scale - b.astype(np.float64) / (255.0 if b.dtype == np.uint8 else 1.0)) ** 2)
    return 10 * math.log10(1.0 / mse)


def test_dcss_round_trip_matches_in_process_psnr(checkpoint_dir):
    if not (DATA / "manifest.json").is_file():
        pytest.skip(f"no DCSS data set at {DATA}; build it with `tessera data dcss --out data/dcss`")
    import torch

    import model
    from training.dataset import TileData

    checkpoint = BUNDLED if BUNDLED.is_file() else checkpoint_dir / "tiny.safetensors"
    tiles = TileData.open(DATA).split("val")[:TILES]

    module, _ = model.load_checkpoint(checkpoint)
    with torch.inference_mode():
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
        y = module(x).clamp(0, 1).permute(0, 2, 3, 1).numpy()
    own_float = psnr(tiles, y)
    own_uint8 = psnr(tiles, np.round(y * 255).astype(np.uint8))

    with serving(checkpoint.parent, checkpoints=(checkpoint,), max_batch_tiles=64, cache_max_bytes=0) as client:
        r = client.post("/v1/encode", content=npy(tiles), headers={"Content-Type": NPY, "Accept": NPY})
        assert r.status_code == 200, r.text
        r = client.post("/v1/decode", content=r.content, headers={"Content-Type": NPY, "Accept": NPY})
        assert r.status_code == 200, r.text
        served = psnr(tiles, load_npy(r.content))

    print(f"{checkpoint.name}: served {served:.3f} dB, in-process {own_uint8:.3f} dB (uint8) {own_float:.3f} dB (float)")
    assert abs(served - own_uint8) < 0.01, (served, own_uint8, checkpoint.name)
    assert abs(served - own_float) < 0.1, (served, own_float, checkpoint.name)
