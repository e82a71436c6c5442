"""Helpers for the training tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tessera.training.config import TrainConfig

SHEET_TILES = 8  # tiles per side of a synthetic sheet


def write_sheets(folder: Path, tile: int = 32, sheets: int = 3, seed: int = 0) -> Path:
    """RGBA sheets of blocky random tiles, plus one fully transparent tile, one constant tile and
    one copy of another tile per sheet (which the builder must drop)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for s in range(sheets):
        side = SHEET_TILES * tile
        coarse = rng.integers(0, 256, size=(side // 4, side // 4, 4), dtype=np.uint8)
        image = coarse.repeat(4, axis=0).repeat(4, axis=1)  # 4x4 blocks: a little structure to learn
        image[..., 3] = np.where(image[..., 3] > 64, 255, image[..., 3])  # mostly opaque
        image[:tile, :tile] = 0  # transparent -> black after premultiplying: constant
        image[:tile, tile : 2 * tile] = (10, 200, 30, 255)  # constant colour
        image[tile : 2 * tile, :tile] = image[2 * tile : 3 * tile, 2 * tile : 3 * tile]  # duplicate
        Image.fromarray(image, "RGBA").save(folder / f"sheet{s}.png")
    return folder


def tiny_config(data: Path, out: Path, **changes) -> TrainConfig:
    """A run of the tiny preset that takes a second or two: 512 inputs in batches of 16."""
    settings = dict(model="dcae-t48", data=str(data), out=str(out), max_inputs=512, batch_size=16, eval_every=128,
                    log_every=4, threads=1, tensorboard=False, progress=False)
    return TrainConfig(**{**settings, **changes})
