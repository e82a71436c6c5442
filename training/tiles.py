"""Cutting sprite sheets into 32x32 RGB tiles, the way the original experiment's data set was made.

A sheet is read by the rule serving and the client apply (``tiles.to_rgba``: 16-bit grey
scaled to 8 bits, not clipped), its colours are multiplied by alpha (transparent -> black), and
it is cut on a grid of ``tile_size`` squares from the top-left corner; a partial row or column at
the right or bottom edge is ignored. Tiles of another size are resized to 32x32 with nearest
neighbour.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tessera.tiles import TILE, cut, premultiply, to_rgba
from tessera.training.errors import DataError

IMAGE_SUFFIXES = (".png", ".gif", ".bmp", ".jpg", ".jpeg", ".webp", ".tga")


def load_rgba(path: Path, data: bytes | None = None) -> np.ndarray:
    """Read an image file as uint8 RGBA, shape (H, W, 4), by ``tiles.to_rgba``; the first frame
    of an animation. ``data``: the file's bytes, for an image packed inside another file
    (``path`` then only names it)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            image.seek(0)
            return np.array(to_rgba(image), dtype=np.uint8)  # a copy: the file closes
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; fix or remove the file") from exc


def cut_grid(pixels: np.ndarray, tile_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """All whole ``tile_size`` squares of a sheet, row-major.

    Returns tiles (N, tile_size, tile_size, 3) and the (x, y) pixel position of each one's
    top-left corner in the sheet.
    """
    tiles, (rows, cols) = cut(pixels, tile_size)
    coords = [(c * tile_size, r * tile_size) for r in range(rows) for c in range(cols)]
    return tiles, coords


def resize_nearest(tiles: np.ndarray, size: int = TILE) -> np.ndarray:
    """Nearest-neighbour resize of (N, t, t, C) tiles to (N, size, size, C), sampling pixel centres
    as Pillow's ``Image.NEAREST`` does."""
    side = tiles.shape[1]
    if side == size:
        return tiles
    index = ((np.arange(size) + 0.5) * side / size).astype(np.int64)
    return tiles[:, index][:, :, index]


def constant_mask(tiles: np.ndarray) -> np.ndarray:
    """True for tiles whose pixels all have the same colour, shape (N,)."""
    flat = tiles.reshape(len(tiles), -1, tiles.shape[-1])
    return (flat == flat[:, :1]).all(axis=(1, 2))


def sheet_tiles_rgba(path: Path, tile_size: int,
                     data: bytes | None = None) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Read one sheet (or ``data``, its bytes) and return its 32x32 RGBA tiles (N, 32, 32, 4)
    uint8, alpha kept (not multiplied in), and their positions."""
    rgba = load_rgba(path, data)
    height, width = rgba.shape[:2]
    if height < tile_size or width < tile_size:
        raise DataError(
            f"image {path} is {width}x{height}, smaller than one {tile_size}x{tile_size} tile; "
            f"remove it or pass a smaller --tile-size"
        )
    tiles, coords = cut_grid(rgba, tile_size)
    return resize_nearest(tiles), coords


def sheet_tiles(path: Path, tile_size: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Read one sheet and return its 32x32 RGB tiles (N, 32, 32, 3) uint8 (alpha multiplied in)
    and their positions."""
    tiles, coords = sheet_tiles_rgba(path, tile_size)
    return premultiply(tiles), coords
