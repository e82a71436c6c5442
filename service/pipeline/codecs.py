"""Bytes in, arrays out, and back: images, sheets, npy, base64 JSON and content negotiation.

Inputs are checked before heavy work: an image's declared size against the pixel and tile
limits before its pixels are decoded, npy data never unpickled, JSON validated by pydantic.
Tiles come out as they came in: uint8 ``[N, 32, 32, 3]`` RGB, or ``[N, 32, 32, 4]`` RGBA for
images with transparency and 4-channel arrays; the pipeline then gives each model the channels
it takes (``tiles.to_channels``: alpha multiplied in for RGB models, as their training data was
made). Sheets may be laid out with Tiled's margin and spacing.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import ValidationError

from tessera.service.errors import BadRequest, InvalidInput, NotAcceptable, TooLarge
from tessera.service.pipeline.npy import read_npy
from tessera.service.http.schemas import DecodeJSONRequest, EncodeJSONRequest
from tessera.tiles import TILE, cut, grid_of, to_channels, to_pixels

IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")  # Pillow decoders accepted from clients
MAX_JPEG_SCANS = 100  # libjpeg's progressive script writes 10; mozjpeg's up to about 20
MAX_PNG_CHUNKS = 10_000  # a 16 MiB PNG in libpng's 8 KiB IDAT chunks has 2,000
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp")
NPY = "application/x-npy"
JSON = "application/json"
PNG = "image/png"


@dataclass(frozen=True)
class Limits:
    """What one request may hold."""

    max_tiles: int
    max_pixels: int


@dataclass(frozen=True)
class Layout:
    """How tiles lie in a sheet, as Tiled's TSX ``tileset`` says: ``margin`` pixels before the
    first tile, ``spacing`` pixels between tiles."""

    margin: int = 0
    spacing: int = 0

    @property
    def plain(self) -> bool:
        return not self.margin and not self.spacing


PLAIN = Layout()


@dataclass(frozen=True)
class TileBatch:
    """Decoded encode input: tiles in order and the [rows, cols] grid of every input image."""

    tiles: np.ndarray  # uint8 [N, 32, 32, 3] or [N, 32, 32, 4]
    grids: tuple[tuple[int, int], ...]

    @property
    def grid(self) -> tuple[int, int] | None:
        """The grid when the body was exactly one image."""
        return self.grids[0] if len(self.grids) == 1 else None


def _clean(exc: Exception) -> str:
    """A library's message without object reprs (``<_io.BytesIO object at 0x...>``)."""
    return re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "the data", str(exc))[:200]


# -- pixels ------------------------------------------------------------------------------------


def check_structure(data: bytes, label: str) -> None:
    """Refuse images built to be slow to decode, before any decoder sees them: JPEGs with more
    scans than an encoder writes (each scan is a pass over every pixel) and PNGs of very many
    chunks (Pillow reads each one in Python)."""
    if data.startswith(b"\xff\xd8"):
        # 0xFF 0xDA starts a scan; entropy-coded data never holds it (0xFF is stuffed with 0x00)
        scans = data.count(b"\xff\xda")
        if scans > MAX_JPEG_SCANS:
            raise InvalidInput(f"{label} is a JPEG of {scans} scans; at most {MAX_JPEG_SCANS} are accepted "
                               f"(encoders write about 10)", code="too_many_scans")
    elif data.startswith(b"\x89PNG\r\n\x1a\n"):
        offset, chunks = 8, 0
        while offset + 8 <= len(data):
            chunks += 1
            if chunks > MAX_PNG_CHUNKS:
                raise InvalidInput(f"{label} is a PNG of more than {MAX_PNG_CHUNKS} chunks; write it with fewer, "
                                   f"larger IDAT chunks", code="too_many_chunks")
            length = int.from_bytes(data[offset : offset + 4], "big")
            if data[offset + 4 : offset + 8] == b"IEND":
                break
            offset += 12 + length


def _grid(width: int, height: int, limits: Limits, label: str, layout: Layout) -> tuple[int, int]:
    """[rows, cols] of a sheet: sides multiple of 32 when it is plain, else as many whole tiles
    as fit (Tiled's rule); refused when it holds none or too many."""
    if layout.plain:
        if width == 0 or height == 0 or width % TILE or height % TILE:
            raise InvalidInput(
                f"{label} is {width}x{height}; both sides must be positive multiples of {TILE} "
                f"(one tile or a sheet of whole tiles): crop or pad it, or give its margin and spacing",
                code="bad_sheet_size",
            )
        rows, cols = height // TILE, width // TILE
    else:
        rows, cols = grid_of(height, width, TILE, layout.margin, layout.spacing)
        if rows == 0 or cols == 0:
            raise InvalidInput(f"{label} is {width}x{height}; it holds no whole {TILE}x{TILE} tile with margin "
                               f"{layout.margin} and spacing {layout.spacing}", code="bad_sheet_size")
    if rows * cols > limits.max_tiles:
        raise TooLarge(f"{label} holds {rows * cols} tiles ({rows}x{cols}); the limit is {limits.max_tiles} per request")
    return rows, cols


def decode_image(data: bytes, limits: Limits, label: str = "image", layout: Layout = PLAIN) -> tuple[np.ndarray, tuple[int, int]]:
    """One image (a 32x32 tile or a sheet of them, laid out by ``layout``) -> its tiles (RGB, or
    RGBA when it has transparency) and [rows, cols].

    Slow to run on large images: call it off the event loop (service.pipeline.offload)."""
    if not data:
        raise BadRequest(f"{label} is empty; send PNG bytes (a 32x32 tile or a sheet)")
    check_structure(data, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise TooLarge(f"{label} declares too many pixels ({exc}); send at most {limits.max_pixels} pixels") from None
    except UnidentifiedImageError:
        raise BadRequest(f"{label} is not an image in a format this service reads; send {', '.join(IMAGE_FORMATS)} data"
                         ) from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise BadRequest(
            f"{label} is not a readable image ({type(exc).__name__}: {_clean(exc)}); send {', '.join(IMAGE_FORMATS)} data"
        ) from None
    with image:
        width, height = image.size
        if width * height > limits.max_pixels:
            raise TooLarge(f"{label} is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}")
        _grid(width, height, limits, label, layout)
        if getattr(image, "is_animated", False):  # n_frames would read every frame first
            raise InvalidInput(f"{label} is animated (it has several frames); send a single frame", code="animated_image")
        try:
            image.load()
            pixels = to_pixels(image)
        except (OSError, ValueError, SyntaxError, EOFError) as exc:
            raise BadRequest(f"{label} is truncated or corrupt ({type(exc).__name__}: {_clean(exc)}); send the whole file"
                             ) from None
    return cut(pixels, TILE, layout.margin, layout.spacing)


# The encode readers: (body, limits, layout, channels) -> TileBatch of tiles with the model's channels.


def tiles_from_image(data: bytes, limits: Limits, layout: Layout = PLAIN, channels: int = 3) -> TileBatch:
    tiles, grid = decode_image(data, limits, layout=layout)
    return TileBatch(to_channels(tiles, channels), (grid,))


def tiles_from_json(data: bytes, limits: Limits, layout: Layout = PLAIN, channels: int = 3) -> TileBatch:
    """``{"images": ["<base64 image>", ...]}`` -> tiles of every image, in order."""
    body = parse_json(EncodeJSONRequest, data)
    parts, grids, total = [], [], 0
    for i, text in enumerate(body.images):
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"images[{i}] is not valid base64 ({exc}); send standard base64 of the image bytes") from None
        room = Limits(max_tiles=limits.max_tiles - total, max_pixels=limits.max_pixels)
        if room.max_tiles <= 0:
            raise TooLarge(f"the images hold more than {limits.max_tiles} tiles; the limit is {limits.max_tiles} per request")
        tiles, grid = decode_image(raw, room, label=f"images[{i}]", layout=layout)
        total += len(tiles)
        parts.append(to_channels(tiles, channels))
        grids.append(grid)
    return TileBatch(np.concatenate(parts), tuple(grids))


# -- npy ---------------------------------------------------------------------------------------


def tiles_from_npy(data: bytes, limits: Limits, layout: Layout = PLAIN, channels: int = 3) -> TileBatch:
    """uint8 ``[N, 32, 32, 3]`` or ``[N, 32, 32, 4]`` -> tiles."""
    if not layout.plain:
        raise InvalidInput("margin and spacing describe a sheet image; an npy body holds tiles already: leave them out",
                           code="bad_layout")
    array = read_npy(data)
    if array.dtype != np.uint8:
        raise InvalidInput(f"tiles must be uint8, got {array.dtype}; convert with array.astype(numpy.uint8)", code="bad_dtype")
    if array.ndim != 4 or array.shape[1:3] != (TILE, TILE) or array.shape[3] not in (3, 4):
        raise InvalidInput(
            f"tiles must have shape [N, 32, 32, 3] or [N, 32, 32, 4], got {list(array.shape)}", code="bad_shape"
        )
    if len(array) == 0:
        raise InvalidInput("the array holds no tiles; send at least one", code="bad_shape")
    if len(array) > limits.max_tiles:
        raise TooLarge(f"{len(array)} tiles in one request; the limit is {limits.max_tiles}")
    return TileBatch(to_channels(array, channels), ())


def check_latents(array: np.ndarray, latent_shape: tuple[int, ...], max_tiles: int, model: str) -> np.ndarray:
    """Float latents ``[N, *latent_shape]`` (or ``[N, prod(latent_shape)]``) -> float32, checked."""
    if array.dtype.kind not in "fiu":
        raise InvalidInput(f"latents must be floats, got {array.dtype}", code="bad_dtype")
    flat = math.prod(latent_shape)
    if not (array.ndim >= 2 and (tuple(array.shape[1:]) == latent_shape or tuple(array.shape[1:]) == (flat,))):
        raise InvalidInput(
            f"model {model!r} takes latents of shape [N, {', '.join(map(str, latent_shape))}] (or [N, {flat}]), "
            f"got {list(array.shape)}",
            code="bad_latent_shape",
        )
    n = array.shape[0]
    if n == 0:
        raise InvalidInput("no latents given; send at least one", code="bad_latent_shape")
    if n > max_tiles:
        raise TooLarge(f"{n} latents in one request; the limit is {max_tiles}")
    with np.errstate(over="ignore", invalid="ignore"):
        latents = np.ascontiguousarray(array, dtype=np.float32).reshape(n, *latent_shape)
    finite = np.isfinite(latents)
    if not finite.all():
        bad = int(np.argmin(finite.reshape(n, -1).all(axis=1)))
        raise InvalidInput(
            f"latents hold {int((~finite).sum())} NaN or infinite values (beyond float32 range counts too), first in "
            f"latent {bad}; send finite float32 values",
            code="non_finite",
        )
    return latents


def latents_from_npy(data: bytes, latent_shape: tuple[int, ...], max_tiles: int, model: str) -> np.ndarray:
    return check_latents(read_npy(data), latent_shape, max_tiles, model)


def latents_from_json(data: bytes, latent_shape: tuple[int, ...], max_tiles: int, model: str) -> tuple[np.ndarray, int | None]:
    """``{"latents": [...], "columns": k}`` -> float32 latents and the columns asked for."""
    body = parse_json(DecodeJSONRequest, data)
    if len(body.latents) > max_tiles:
        raise TooLarge(f"{len(body.latents)} latents in one request; the limit is {max_tiles}")
    try:
        array = np.asarray(body.latents, dtype=np.float64)
    except ValueError:
        raise InvalidInput(
            "latents are ragged (rows of different lengths); every latent must have the model's shape",
            code="bad_latent_shape",
        ) from None
    return check_latents(array, latent_shape, max_tiles, model), body.columns


def parse_json(schema, data: bytes):
    """Validate a JSON body against a pydantic model; 400 for bad JSON, 422 for a wrong shape."""
    try:
        return schema.model_validate_json(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if any(err["type"] == "json_invalid" for err in errors):
            raise BadRequest(f"body is not valid JSON ({errors[0]['msg']}); send a JSON object") from None
        fields = ", ".join(schema.model_fields)
        unknown = [str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1]
        if unknown:
            raise InvalidInput(f"unknown JSON field(s) {sorted(unknown)[:5]}; the body takes {fields}",
                               code="unknown_field") from None
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}" for e in errors[:5])
        raise InvalidInput(f"JSON body does not match the schema ({problems}); expected fields: {fields}", code="bad_json") from None


# -- responses ---------------------------------------------------------------------------------


def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 [H, W, 3] as an RGB PNG, [H, W, 4] as an RGBA one."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA" if pixels.shape[-1] == 4 else "RGB").save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def tiles_base64(tiles: np.ndarray) -> list[str]:
    return [base64.b64encode(png_bytes(tile)).decode("ascii") for tile in tiles]


# -- media types -------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``"image/png; charset=x"`` -> ``"image/png"``; empty when absent."""
    return (content_type or "").split(";", 1)[0].strip().lower()


@functools.lru_cache(maxsize=256)  # clients send the same few Accept headers again and again
def negotiate(accept: str | None, offered: tuple[str, ...]) -> str:
    """The offered type the ``Accept`` header prefers; ``offered[0]`` when it has no preference."""
    if not accept or not accept.strip():
        return offered[0]
    ranges: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        fields = [f.strip() for f in part.split(";")]
        kind = fields[0].lower()
        if not kind:
            continue
        q = 1.0
        for param in fields[1:]:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranges.append((q, position, kind))
    ranges.sort(key=lambda r: (-r[0], r[1]))
    for q, _, kind in ranges:
        if q <= 0:
            break
        for candidate in offered:
            if kind in ("*/*", candidate) or (kind.endswith("/*") and candidate.startswith(kind[:-1])):
                return candidate
    raise NotAcceptable(f"cannot answer with {accept!r}; this endpoint answers {', '.join(offered)}")
