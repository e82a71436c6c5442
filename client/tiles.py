"""Images <-> arrays of 32x32 tiles, on the client's side of the wire.

The client cuts sheets into tiles itself so that every request carries the same compact body:
npy uint8 [N, 32, 32, 3], or [N, 32, 32, 4] for images with transparency. The server gives each
model the channels it takes (an RGB model multiplies alpha into the colours, an RGBA model keeps
it), so a tile has one identity whichever way it is sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from tessera.client.errors import InputError
from tessera.tiles import (  # noqa: F401 (re-exported)
    TILE,
    assemble,
    cut,
    default_columns,
    grid_of,
    opaque_as_rgb,
    premultiply,
    to_channels,
    to_pixels,
    to_rgb,
)
from tessera.tiles.tsx import Tileset, TsxError, apply_colour_key, read_tsx

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


image_to_rgb = to_rgb  # the server's and training's rule for RGB models: alpha multiplied in, 16-bit grey scaled
image_pixels = to_pixels  # what is sent: RGB, or RGBA with the alpha kept when the image has transparency


def cut_sheet(pixels: np.ndarray, *, crop: bool = False, name: str = "image") -> tuple[np.ndarray, tuple[int, int]]:
    """Cut uint8 [H, W, 3 or 4] into row-major tiles.

    Args:
        pixels: the sheet.
        crop: drop a partial last row/column of tiles instead of refusing the sheet.
        name: how to call the sheet in error messages.

    Returns:
        tiles uint8 [rows * cols, 32, 32, 3 or 4] and the grid (rows, cols).
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


def cut_atlas(pixels: np.ndarray, margin: int, spacing: int, *, name: str = "image",
              count: int | None = None) -> tuple[np.ndarray, tuple[int, int]]:
    """Cut an atlas laid out as Tiled does (``margin`` pixels before the first tile, ``spacing``
    between tiles) into row-major tiles; ``count`` keeps only the first ``count`` of them."""
    if margin < 0 or spacing < 0:
        raise InputError(f"margin and spacing must not be negative, got {margin} and {spacing}")
    tiles, (rows, cols) = cut(pixels, TILE, margin, spacing)
    if not len(tiles):
        raise InputError(f"{name} ({pixels.shape[1]}x{pixels.shape[0]} pixels) holds no whole {TILE}x{TILE} tile "
                         f"with margin {margin} and spacing {spacing}")
    if count is not None:
        tiles = tiles[:count]
    return tiles, (rows, cols)


def read_tileset(path: str | os.PathLike) -> tuple[np.ndarray, tuple[int, int], Tileset]:
    """The tiles of a Tiled tileset (``.tsx``): its image cut by its margin, spacing and columns,
    its ``trans`` colour key made transparent (RGBA tiles when anything is transparent)."""
    try:
        tileset = read_tsx(path)
    except TsxError as exc:
        raise InputError(str(exc)) from None
    if (tileset.tile_width, tileset.tile_height) != (TILE, TILE):
        raise InputError(f"{path}: its tiles are {tileset.tile_width}x{tileset.tile_height}; the models take "
                         f"{TILE}x{TILE} tiles (resize the tileset, e.g. with nearest neighbour)")
    rgba = np.asarray(load_image(tileset.image).convert("RGBA"))
    pixels = opaque_as_rgb(apply_colour_key(rgba, tileset.trans))
    tiles, (rows, cols) = cut_atlas(pixels, tileset.margin, tileset.spacing, name=str(tileset.image), count=tileset.count)
    if tileset.columns is not None and tileset.columns != cols:
        raise InputError(f"{path}: says {tileset.columns} columns, but its image holds {cols} with margin "
                         f"{tileset.margin} and spacing {tileset.spacing}")
    return tiles, (rows, cols), tileset


def tiles_from_array(array: np.ndarray) -> np.ndarray:
    """Check a uint8 [N, 32, 32, 3|4] array and return it as tiles (RGBA kept)."""
    if not isinstance(array, np.ndarray):
        raise InputError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise InputError(f"tile arrays must be uint8 (0..255), got {array.dtype}; convert with (x * 255).round().astype(np.uint8)")
    if array.ndim != 4 or array.shape[1:3] != (TILE, TILE) or array.shape[3] not in (3, 4):
        raise InputError(f"tile arrays must be shaped [N, {TILE}, {TILE}, 3 or 4], got {list(array.shape)}")
    if array.shape[0] == 0:
        raise InputError("the tile array is empty")
    return np.ascontiguousarray(array)


def assemble_sheet(tiles: np.ndarray, columns: int | None = None, margin: int = 0, spacing: int = 0) -> np.ndarray:
    """uint8 [N, 32, 32, 3 or 4] -> one sheet, row-major, unused cells black (transparent with alpha); ``margin`` and
    ``spacing`` (Tiled's) lay it out as an atlas: [2*margin + rows*32 + (rows-1)*spacing, ...]."""
    columns = default_columns(len(tiles)) if columns is None else int(columns)
    if columns < 1:
        raise InputError(f"columns must be at least 1, got {columns}")
    if margin < 0 or spacing < 0:
        raise InputError(f"margin and spacing must not be negative, got {margin} and {spacing}")
    return assemble(tiles, columns, margin, spacing)
