"""The tile format every part of Tessera agrees on: 32x32 uint8 RGB or RGBA, cut row-major from sheets.

Pure numpy and Pillow (no torch), so the client can share it. An RGB model takes RGBA with
alpha multiplied in (transparent -> black, as its training data was made); an RGBA model takes
RGB as opaque. 16-bit grey is scaled down. So a tile has one identity whether it arrives as a
PNG, a sheet or an array.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

TILE = 32  # side of one tile in pixels, the models' input size
MAX_REFINE_STEPS = 100  # most encode-effort steps one request may ask for (POST /v1/encode?refine=)
# the decoders a model may have for its latents (POST /v1/decode?decoder=): its own, trained for
# fidelity, and one fine-tuned for sharp, pixel-art-like tiles (`tessera sharpen`; a checkpoint
# <model>.sharp.safetensors beside the model's)
DECODERS = ("faithful", "sharp")
SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # grey modes wider than 8 bits
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


def premultiply(rgba: np.ndarray) -> np.ndarray:
    """uint8 [..., 4] -> uint8 [..., 3]: colour times alpha, rounded to nearest."""
    rgb = rgba[..., :3].astype(np.uint16)
    alpha = rgba[..., 3:4].astype(np.uint16)
    return ((rgb * alpha + 127) // 255).astype(np.uint8)


def _grey8(image: Image.Image) -> np.ndarray:
    """A 16-bit grey image's pixels scaled to uint8 [H, W] (Pillow's convert would clip them)."""
    grey = np.asarray(image, dtype=np.int64).clip(0, 65535)
    return ((grey * 255 + 32767) // 65535).astype(np.uint8)


def to_rgba(image: Image.Image) -> np.ndarray:
    """Pixels of an opened image as uint8 [H, W, 4], alpha kept as the image has it (opaque
    without one), 16-bit grey scaled to 8 bits: the rule ``to_rgb`` applies, before alpha is
    multiplied in."""
    if image.mode in SIXTEEN_BIT:
        grey = _grey8(image)
        return np.dstack([grey, grey, grey, np.full_like(grey, 255)])
    return np.asarray(image if image.mode == "RGBA" else image.convert("RGBA"))


def to_rgb(image: Image.Image) -> np.ndarray:
    """Pixels of an opened image as uint8 [H, W, 3]: alpha multiplied in, 16-bit grey scaled.
    Serving, the client and training's data sets all read images through this rule."""
    if image.mode in SIXTEEN_BIT:
        return np.repeat(_grey8(image)[..., None], 3, axis=-1)
    if has_alpha(image):
        return premultiply(to_rgba(image))
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def has_alpha(image: Image.Image) -> bool:
    """Whether an opened image has transparency (an alpha band or a transparent colour)."""
    return image.mode in _ALPHA_MODES or "transparency" in image.info


def to_pixels(image: Image.Image) -> np.ndarray:
    """Pixels of an opened image as uint8 [H, W, 4] when it has transparency (alpha kept),
    else [H, W, 3] (an RGBA image that is opaque everywhere included): what a client sends, so that an RGBA model gets the alpha and an RGB model
    multiplies it in by ``to_channels``, as ``to_rgb`` would."""
    if not has_alpha(image):
        return to_rgb(image)
    return opaque_as_rgb(to_rgba(image))


def opaque_as_rgb(rgba: np.ndarray) -> np.ndarray:
    """uint8 [..., 4] as [..., 3] when every alpha is 255 (the same tiles to any model, in 3/4 of
    the bytes), else unchanged."""
    return rgba[..., :3] if (rgba[..., 3] == 255).all() else rgba


def to_channels(tiles: np.ndarray, channels: int) -> np.ndarray:
    """uint8 [..., 3 or 4] as a model with ``channels`` (3 or 4) takes it: RGBA for an RGB model
    with alpha multiplied in, RGB for an RGBA model made opaque; unchanged when it matches."""
    have = tiles.shape[-1]
    if have == channels:
        return tiles
    if have == 4 and channels == 3:
        return premultiply(tiles)
    if have == 3 and channels == 4:
        return np.concatenate([tiles, np.full((*tiles.shape[:-1], 1), 255, np.uint8)], axis=-1)
    raise ValueError(f"cannot turn {have}-channel tiles into {channels} channels")


def grid_of(height: int, width: int, size: int = TILE, margin: int = 0, spacing: int = 0) -> tuple[int, int]:
    """(rows, cols) of whole ``size`` tiles in a sheet laid out as Tiled's TSX says: ``margin``
    pixels before the first tile, ``spacing`` pixels between tiles (a tile must fit in the sheet)."""
    if margin < 0 or spacing < 0:
        raise ValueError(f"margin and spacing must not be negative, got {margin} and {spacing}")
    step = size + spacing
    return max(0, (height - margin + spacing) // step), max(0, (width - margin + spacing) // step)


def cut(pixels: np.ndarray, size: int = TILE, margin: int = 0, spacing: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """Every whole ``size`` square of [H, W, C], row-major; a partial last row/column is dropped.
    With ``margin`` / ``spacing`` (Tiled's), the squares start ``margin`` pixels in and are
    ``spacing`` pixels apart.

    Returns tiles [rows * cols, size, size, C] (contiguous) and the grid (rows, cols).
    """
    rows, cols = grid_of(pixels.shape[0], pixels.shape[1], size, margin, spacing)
    channels = pixels.shape[2]
    if margin or spacing:
        step = size + spacing
        picked = [pixels[margin + r * step : margin + r * step + size, margin + c * step : margin + c * step + size]
                  for r in range(rows) for c in range(cols)]
        empty = np.zeros((0, size, size, channels), dtype=pixels.dtype)
        return (np.stack(picked) if picked else empty), (rows, cols)
    grid = pixels[: rows * size, : cols * size]
    tiles = grid.reshape(rows, size, cols, size, channels).swapaxes(1, 2)  # (rows, cols, size, size, C)
    return np.ascontiguousarray(tiles.reshape(rows * cols, size, size, channels)), (rows, cols)


def default_columns(count: int) -> int:
    """Sheet width for ``count`` tiles: one row up to 16 tiles, else about square."""
    return count if count <= 16 else math.ceil(math.sqrt(count))


def sheet_shape(count: int, columns: int, margin: int = 0, spacing: int = 0) -> tuple[int, int, int]:
    """(rows, height, width) of the sheet ``assemble`` lays ``count`` tiles out in, in pixels."""
    rows = max(1, math.ceil(count / columns))
    step = TILE + spacing
    return rows, 2 * margin + rows * step - spacing, 2 * margin + columns * step - spacing


def assemble(tiles: np.ndarray, columns: int, margin: int = 0, spacing: int = 0) -> np.ndarray:
    """uint8 [N, 32, 32, C] -> one sheet, row-major, ``columns`` wide; unused cells, the margin
    (on every side) and the spacing between tiles are zero (black, or transparent with alpha)."""
    count, channels = len(tiles), tiles.shape[-1]
    rows, height, width = sheet_shape(count, columns, margin, spacing)
    canvas = np.zeros((rows * columns, TILE, TILE, channels), dtype=np.uint8)
    canvas[:count] = tiles
    packed = canvas.reshape(rows, columns, TILE, TILE, channels).swapaxes(1, 2).reshape(rows * TILE, columns * TILE, channels)
    if not margin and not spacing:
        return packed
    step = TILE + spacing
    sheet = np.zeros((height, width, channels), dtype=np.uint8)
    for r in range(rows):
        y = margin + r * step
        for c in range(columns):
            x = margin + c * step
            sheet[y : y + TILE, x : x + TILE] = packed[r * TILE : (r + 1) * TILE, c * TILE : (c + 1) * TILE]
    return sheet
