"""Request bodies: random tiles as arrays, PNG, npy and base64, and sheets built independently
of the service's own code."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

NPY = "application/x-npy"


def random_tiles(n: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, channels), dtype=np.uint8)


def png(array: np.ndarray, mode: str | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format="PNG")
    return buffer.getvalue()


def png_sheet(seed: int, rows: int = 3, cols: int = 4) -> bytes:
    """A PNG sheet of ``rows`` x ``cols`` random RGB tiles."""
    return png(np.random.default_rng(seed).integers(0, 256, size=(rows * 32, cols * 32, 3), dtype=np.uint8))


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def sheet_of(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tiles laid out row-major, built with explicit loops (independent of the service's code)."""
    sheet = np.zeros((rows * 32, cols * 32, tiles.shape[-1]), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        sheet[r * 32 : (r + 1) * 32, c * 32 : (c + 1) * 32] = tile
    return sheet
