"""Images <-> arrays of 32x32 RGB tiles, on the client's side of the wire.

The client cuts sheets into tiles itself so that every request carries the same compact body:
npy uint8 [N, 32, 32, 3]. Alpha is multiplied into the colours here (transparent -> black), the
same rule the server applies to RGBA uploads, so a tile has one identity whichever way it is sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from client.errors import InputError
from tiles import TILE, assemble, cut, default_columns, premultiply, to_rgb  # noqa: F401 (re-exported)

ImageSource = Image.Image | str | os.PathLike


def load_image(source: ImageSource) -> Image.Image:
    """Open a path as an image (or pass a PIL image through); InputError when it is not one."""
    if isinstance(source, Image.Image):
        return source
    path = Path(source)
    try:
        img = Image.open(path)
        img.load()  # reads the pixels now and closes the file
        return img
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, not an image") from None
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image (Pillow cannot read it; use PNG, GIF, BMP, WebP...)") from None
    except (OSError, Image.DecompressionBombError) as exc:
        raise InputError(f"{path}: cannot read the image: {exc}") from None


image_to_rgb = to_rgb  # the server's and training's rule: alpha multiplied in, 16-bit grey scaled


def cut_sheet(pixels: np.ndarray, *, crop: bool = False, name: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    """Cut uint8 [H, W, 3] into row-major tiles.

    Args:
        pixels: the sheet.
        crop: drop a partial last row/column of tiles instead of refusing the sheet.
        name: how to call the sheet in error messages.

    Returns:
        tiles uint8 [rows * cols, 32, 32, 3] and the grid (rows, cols).
    """
    height, width = pixels.shape[:2]
    if crop:
        height, width = height - height % TILE, width - width % TILE
        pixels = pixels[:height, :width]
    if height == 0 or width == 0 or height % TILE or width % TILE:
        raise InputError(
            f"{name} is {width}x{height} pixels; both sides must be multiples of {TILE} "
            f"(crop or pad it, or drop the partial edge tiles with crop=True; --crop on the command line)"
        )
    return cut(pixels)


def tiles_from_array(array: np.ndarray) -> np.ndarray:
    """Check a uint8 [N, 32, 32, 3|4] array and return it as RGB tiles."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise InputError(f"tile arrays must be uint8 (0..255), got {array.dtype}; convert with (x * 255).round().astype(np.uint8)")
    if array.ndim != 4 or array.shape[1:3] != (TILE, TILE) or array.shape[3] not in (3, 4):
        raise InputError(f"tile arrays must be shaped [N, {TILE}, {TILE}, 3 or 4], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise InputError("the tile array is empty")
    return premultiply(array) if array.shape[3] == 4 else np.ascontiguousarray(array)


def assemble_sheet(tiles: np.ndarray, columns: int | None = None) -> np.ndarray:
    """uint8 [N, 32, 32, 3] -> [rows*32, columns*32, 3], row-major, unused cells black."""
    columns = default_columns(len(tiles)) if columns is None else int(columns)
    if columns < 1:
        raise InputError(f"columns must be at least 1, got {columns}")
    return assemble(tiles, columns)
