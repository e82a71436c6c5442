"""Request bodies for the load generator: every tile distinct, so neither the latent cache nor
the batcher's de-duplication can shortcut a measurement that is meant to reach the model.

Tiles are uniform noise: the worst case for PNG size and decoding, and never equal by chance.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
from PIL import Image

from bench.load import Request

TILE = 32
TILE_BYTES = TILE * TILE * 3
NPY = "application/x-npy"
PNG = "image/png"


def npy_header(shape: tuple[int, ...]) -> bytes:
    """The .npy header numpy writes for a uint8 array of ``shape``."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, np.uint8))
    data = buffer.getvalue()
    return data[: len(data) - int(np.prod(shape))]


class NpyTiles:
    """One uint8 tile per request as npy, every tile distinct from every other this object
    gives out (across runs too: it ignores the run's request index and counts on itself):
    3,072-byte windows of one noise buffer, each request's a few bytes further on."""

    def __init__(self, seed: int = 0, buffer_mib: int = 4, path: str = "/v1/encode") -> None:
        self.header = npy_header((1, TILE, TILE, 3))
        self.noise = np.random.default_rng(seed).integers(0, 256, buffer_mib << 20, dtype=np.uint8).tobytes()
        self.span = len(self.noise) - TILE_BYTES
        self.path = path
        self.headers = {"Content-Type": NPY, "Accept": NPY}
        self._next = itertools.count()

    def __call__(self, i: int) -> Request:
        offset = (next(self._next) * 7919) % self.span  # 7919 is prime: distinct offsets for millions of requests
        return Request(self.path, self.header + self.noise[offset : offset + TILE_BYTES], self.headers, 1)


def sheet_png(rows: int, cols: int, seed: int) -> bytes:
    """A PNG sprite sheet of ``rows`` x ``cols`` noise tiles (RGB)."""
    pixels = np.random.default_rng(seed).integers(0, 256, (rows * TILE, cols * TILE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class Sheets:
    """``count`` distinct PNG sheets of ``rows`` x ``cols`` tiles; request i sends sheet i.
    Asking for more than ``count`` is an error, so a sheet is never sent twice by accident."""

    def __init__(self, rows: int, cols: int, count: int, seed: int = 1000, path: str = "/v1/encode") -> None:
        self.tiles = rows * cols
        self.bodies = [sheet_png(rows, cols, seed + k) for k in range(count)]
        self.path = path
        self.headers = {"Content-Type": PNG, "Accept": NPY}

    def __call__(self, i: int) -> Request:
        if i >= len(self.bodies):
            raise IndexError(f"only {len(self.bodies)} distinct sheets were made; make more")
        return Request(self.path, self.bodies[i], self.headers, self.tiles)

    def repeat(self, index: int = 0):
        """Requests that all send the same sheet (for cache hits)."""
        body = self.bodies[index]
        return lambda i: Request(self.path, body, self.headers, self.tiles)
