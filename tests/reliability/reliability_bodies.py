"""Hostile request bodies: broken, lying, huge-on-paper and odd-but-valid images and arrays.

Plain builders for the hand-written cases and Hypothesis strategies (built from the same
builders) for the fuzzer. Pixels come from numpy generators seeded by Hypothesis, so shrinking
stays cheap and every body is reproducible from its seed.
"""

from __future__ import annotations

import base64
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from PIL import Image

TILE = 32


# -- images --------------------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(rng: np.random.Generator, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width) if channels == 1 else (height, width, channels)
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def raw_png(width: int, height: int, bit_depth: int, color_type: int, rows: bytes | None = None) -> bytes:
    """A PNG written chunk by chunk: any declared size, depth and colour type, with ``rows``
    (filter byte included) as its only IDAT, or all-zero rows when None."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[color_type]
    if rows is None:
        stride = 1 + (width * channels * bit_depth + 7) // 8
        rows = bytes(stride * height)
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0))
    palette = _chunk(b"PLTE", bytes(range(48))) if color_type == 3 else b""
    return b"\x89PNG\r\n\x1a\n" + head + palette + _chunk(b"IDAT", zlib.compress(rows)) + _chunk(b"IEND", b"")


def bomb_png(width: int, height: int) -> bytes:
    """A few hundred bytes that declare ``width`` x ``height`` pixels (a decompression bomb)."""
    return raw_png(width, height, 8, 2, rows=b"")


def png16_rgb(tiles_high: int = 1, tiles_wide: int = 1, seed: int = 0) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write these, so it is written by hand)."""
    rng = np.random.default_rng(seed)
    height, width = tiles_high * TILE, tiles_wide * TILE
    pixels = rng.integers(0, 65536, size=(height, width * 3), dtype=np.uint16).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels)
    return raw_png(width, height, 16, 2, rows)


def png16_grey(seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 65536, size=(TILE, TILE), dtype=np.uint16)
    return encoded(Image.fromarray(pixels))  # mode I;16


def palette_png(seed: int = 0, transparent: bool = True) -> bytes:
    image = Image.fromarray(noise(np.random.default_rng(seed), TILE, TILE)).convert("P", palette=Image.Palette.ADAPTIVE)
    return encoded(image, transparency=0) if transparent else encoded(image)


def animated(fmt: str, frames: int = 3, seed: int = 0) -> bytes:
    """An animated GIF, PNG (APNG) or WebP of ``frames`` distinct 32x32 frames."""
    rng = np.random.default_rng(seed)
    images = [Image.fromarray(noise(rng, TILE, TILE)) for _ in range(frames)]
    return encoded(images[0], fmt, save_all=True, append_images=images[1:], duration=100, loop=0)


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def corrupted(data: bytes, seed: int = 0, flips: int = 8) -> bytes:
    """``data`` with a few bytes past the signature overwritten."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for position in rng.integers(min(16, len(out) - 1), len(out), size=flips):
        out[position] = int(rng.integers(0, 256))
    return bytes(out)


IMAGE_MODES = {  # mode -> formats that can store it
    "1": ("PNG", "BMP", "GIF"),
    "L": ("PNG", "BMP", "GIF", "JPEG", "WEBP"),
    "LA": ("PNG",),
    "P": ("PNG", "BMP", "GIF"),
    "RGB": ("PNG", "BMP", "JPEG", "WEBP"),
    "RGBA": ("PNG", "WEBP", "BMP"),
    "I;16": ("PNG",),
    "CMYK": ("JPEG",),
}


@st.composite
def images(draw) -> bytes:
    """Image files, valid and not: tiles and sheets in every mode and format, odd sizes, 0x0
    and 1x1, 16-bit, animated, truncated, corrupted, bombs and junk."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["sheet", "sheet", "sheet", "odd", "png16", "animated", "truncated", "corrupted", "bomb", "junk"]))
    if kind == "png16":
        return png16_rgb(draw(st.integers(1, 2)), draw(st.integers(1, 2)), seed)
    if kind == "animated":
        return animated(draw(st.sampled_from(["GIF", "PNG", "WEBP"])), draw(st.integers(2, 3)), seed)
    if kind == "bomb":
        side = draw(st.sampled_from([0, 1, 2**15, 2**16 - 1, 2**24, 2**31 - 1]))
        return bomb_png(side, draw(st.sampled_from([0, 1, 32, side])))
    if kind == "junk":
        return draw(st.binary(max_size=256))
    if kind == "odd":
        height, width = draw(st.integers(1, 70)), draw(st.integers(1, 70))
    else:
        height, width = TILE * draw(st.integers(1, 3)), TILE * draw(st.integers(1, 3))
    mode = draw(st.sampled_from(sorted(IMAGE_MODES)))
    fmt = draw(st.sampled_from(IMAGE_MODES[mode]))
    base = Image.fromarray(noise(rng, height, width, 4), "RGBA")
    image = base.convert(mode) if mode != "I;16" else Image.fromarray(noise(rng, height, width, 1).astype(np.uint16) * 257)
    data = encoded(image, fmt)
    if kind == "truncated":
        return truncated(data, draw(st.floats(0.0, 0.99)))
    if kind == "corrupted":
        return corrupted(data, seed, draw(st.integers(1, 16)))
    return data


def image_base64() -> st.SearchStrategy[str]:
    return images().map(lambda data: base64.b64encode(data).decode("ascii"))


# -- npy -----------------------------------------------------------------------------------------


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def npy_declaring(shape: tuple[int, ...], dtype: str = "|u1", data: bytes = b"", fortran: bool = False) -> bytes:
    """An .npy header that declares ``shape`` of ``dtype``, followed by ``data`` (whatever its size)."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": dtype, "fortran_order": fortran, "shape": shape})
    return buffer.getvalue() + data


class Tripwire:
    """Unpickling this creates a file: proof that a body was unpickled."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def pickled_npy(marker: Path) -> bytes:
    """An object array whose unpickling would create ``marker``."""
    array = np.empty(1, dtype=object)
    array[0] = Tripwire(marker)
    return npy(array, allow_pickle=True)


NPY_DTYPES = ["u1", "i1", "u2", "i4", "i8", "f2", "f4", "f8", ">f4", "c8", "?", "<U4", "S3", "M8[s]"]


@st.composite
def npy_bodies(draw, latent_channels: int = 64, marker: Path | None = None) -> bytes:
    """.npy bodies for either endpoint: valid tiles and latents (some with NaN or Inf), other
    dtypes and shapes, lying headers, truncated data, structured and object arrays."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["tiles", "tiles", "latents", "latents", "dtype", "shape", "lying", "truncated", "object", "structured"]))
    n = draw(st.integers(0, 4))
    if kind == "tiles":
        array = rng.integers(0, 256, size=(n, TILE, TILE, draw(st.sampled_from([3, 4]))), dtype=np.uint8)
        return npy(np.asfortranarray(array) if draw(st.booleans()) else array)
    if kind == "latents":
        shape = draw(st.sampled_from([(n, latent_channels, 1, 1), (n, latent_channels)]))
        array = rng.normal(size=shape).astype(draw(st.sampled_from(["f2", "f4", "f8", ">f4"])))
        if n and draw(st.booleans()):
            with np.errstate(over="ignore"):  # 1e300 becomes inf in float16 and float32
                array.flat[int(rng.integers(0, array.size))] = draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e300]))
        return npy(array)
    if kind == "dtype":
        shape = draw(st.sampled_from([(n, TILE, TILE, 3), (n, latent_channels, 1, 1), (n, latent_channels)]))
        return npy(np.zeros(shape, dtype=draw(st.sampled_from(NPY_DTYPES))))
    if kind == "shape":
        shape = tuple(draw(st.lists(st.integers(0, 40), max_size=5)))
        return npy(np.zeros(shape, dtype=draw(st.sampled_from(["u1", "f4"]))))
    if kind == "lying":
        shape = tuple(draw(st.lists(st.sampled_from([0, 1, 3, 32, 64, 2**20, 2**31, 2**40]), min_size=1, max_size=4)))
        return npy_declaring(shape, draw(st.sampled_from(["|u1", "<f4", "|O"])), draw(st.binary(max_size=64)), draw(st.booleans()))
    if kind == "truncated":
        return truncated(npy(rng.integers(0, 256, size=(max(n, 1), TILE, TILE, 3), dtype=np.uint8)), draw(st.floats(0.0, 0.99)))
    if kind == "object":
        return pickled_npy(marker) if marker is not None else npy(np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return npy(np.zeros(n, dtype=[("r", "u1"), ("g", "u1"), ("b", "u1")]))


# -- images built to be slow to decode --------------------------------------------------------------


def _jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
    """(marker, start, end) of every segment of a baseline or progressive JPEG; a scan's segment
    runs to the next marker that is neither byte stuffing (0xFF00) nor a restart marker."""
    i, found = 2, []
    while i < len(data):
        marker = data[i + 1]
        if marker == 0xD9:  # end of image
            found.append((marker, i, i + 2))
            break
        end = i + 2 + struct.unpack(">H", data[i + 2 : i + 4])[0]
        if marker == 0xDA:
            while True:
                end = data.index(b"\xff", end)
                if data[end + 1] == 0 or 0xD0 <= data[end + 1] <= 0xD7:
                    end += 2
                    continue
                break
        found.append((marker, i, end))
        i = end
    return found


def many_scans_jpeg(scans: int, side: int = 2048) -> bytes:
    """A progressive JPEG of ``side`` x ``side`` flat pixels whose last scan is repeated until it
    has ``scans`` scans: tens of kilobytes that take a decoder one pass over every pixel per scan
    (2,000 scans: about 10 s here)."""
    plain = encoded(Image.fromarray(np.full((side, side, 3), 128, np.uint8)), "JPEG", progressive=True, quality=90)
    segments = _jpeg_segments(plain)
    _, start, end = [s for s in segments if s[0] == 0xDA][-1]
    written = sum(1 for s in segments if s[0] == 0xDA)
    return plain[:end] + plain[start:end] * (scans - written) + b"\xff\xd9"


def many_chunks_png(chunks: int, seed: int = 0) -> bytes:
    """A 32x32 PNG whose image data is split into ``chunks`` IDAT chunks of a byte or two."""
    pixels = noise(np.random.default_rng(seed), TILE, TILE)
    data = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in pixels))
    size = max(1, -(-len(data) // chunks))
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    parts += [b""] * (chunks - len(parts))  # empty IDAT chunks are valid
    head = _chunk(b"IHDR", struct.pack(">IIBBBBB", TILE, TILE, 8, 2, 0, 0, 0))
    return b"\x89PNG\r\n\x1a\n" + head + b"".join(_chunk(b"IDAT", p) for p in parts) + _chunk(b"IEND", b"")


def many_frames_gif(frames: int, seed: int = 0) -> bytes:
    """A 32x32 GIF of ``frames`` frames: a two-frame GIF whose second frame (from its graphic
    control extension to the end of its image data) is repeated."""
    two = animated("GIF", frames=2, seed=seed)
    controls = [i for i in range(len(two) - 1) if two[i : i + 2] == b"\x21\xf9"]  # graphic control extensions
    start, end = controls[-1], len(two) - 1  # the last frame, up to the trailer (0x3B)
    return two[:end] + two[start:end] * (frames - 2) + b"\x3b"
