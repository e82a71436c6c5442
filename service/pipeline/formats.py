"""The media types each endpoint reads and answers, each with its codec (``tessera.service.pipeline.codecs``):
the registry the pipeline picks from by ``Content-Type`` and ``Accept``.

Readers turn a checked body into arrays; small npy bodies decode on the event loop (a hand-off
to a thread costs more than reading them), everything else in the decode threads
(``tessera.service.pipeline.offload``). Writers turn results into answers (``Answer``: bytes, media type, headers); the first writer of an endpoint
answers requests that state no preference. JSON answers are written by orjson, numpy arrays
included (float32 values in their shortest exact form).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from tessera.service.pipeline import codecs
from tessera.service.pipeline.codecs import IMAGE_TYPES, JSON, NPY, PNG, PLAIN, Layout, TileBatch
from tessera.service.errors import TooLarge, UnsupportedMediaType
from tessera.service.pipeline.npy import npy_bytes
from tessera.service.pipeline.offload import INLINE_BYTES
from tessera.tiles import assemble, default_columns, sheet_shape


@dataclass(frozen=True)
class Reader:
    """How one media type is read: ``read(body, ...)``, on the event loop up to ``inline_bytes``."""

    read: Callable[..., Any]
    inline_bytes: int = 0

    def inline(self, body: bytes) -> bool:
        return len(body) <= self.inline_bytes


def _latents_npy(data: bytes, latent_shape: tuple[int, ...], max_tiles: int, model: str) -> tuple[np.ndarray, None]:
    return codecs.latents_from_npy(data, latent_shape, max_tiles, model), None


# encode: (body, Limits, Layout, channels) -> TileBatch; decode: (body, latent_shape, max_tiles, model) -> (latents, columns)
ENCODE_READERS: dict[str, Reader] = {
    **{kind: Reader(codecs.tiles_from_image) for kind in IMAGE_TYPES},
    NPY: Reader(codecs.tiles_from_npy, INLINE_BYTES),
    JSON: Reader(codecs.tiles_from_json),
}
DECODE_READERS: dict[str, Reader] = {NPY: Reader(_latents_npy, INLINE_BYTES), JSON: Reader(codecs.latents_from_json)}


def reader(content_type: str | None, content_encoding: str | None, readers: dict[str, Reader]) -> Reader:
    """The reader of a body sent with these headers; 415 for an encoding or media type it cannot read."""
    if content_encoding is not None and content_encoding.strip().lower() not in ("identity", ""):
        raise UnsupportedMediaType(f"Content-Encoding {content_encoding.strip().lower()!r} is not accepted; send the body "
                                   f"uncompressed (PNG and npy bodies are compact already)", code="unsupported_encoding")
    kind = codecs.media_type(content_type)
    found = readers.get(kind)
    if found is None:
        raise UnsupportedMediaType(f"cannot read {kind or 'no Content-Type'}; send one of: {', '.join(readers)}")
    return found


# -- answers -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A successful answer, for the HTTP layer to send: the body, its media type and headers."""

    body: bytes
    media_type: str
    headers: dict[str, str]


def json_answer(content: Any, headers: dict[str, str]) -> Answer:
    return Answer(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), JSON, headers)


@dataclass(frozen=True)
class Encoded:
    """What ``/v1/encode`` answers."""

    model: str
    latent_shape: tuple[int, ...]
    latents: np.ndarray  # float32 [N, *latent_shape]
    cached: int  # tiles answered from the latent cache
    batch: TileBatch  # the decoded body: its grids
    refined: int | None = None  # refinement steps that ran (encode ?refine=), None: not asked

    def headers(self) -> dict[str, str]:
        headers = {
            "X-Tessera-Model": self.model,
            "X-Tessera-Cached": str(self.cached),
            "X-Tessera-Latent-Shape": ",".join(map(str, self.latent_shape)),
        }
        if self.refined is not None:
            headers["X-Tessera-Refined"] = str(self.refined)
        grid = self.batch.grid
        if grid is not None:
            headers["X-Tessera-Grid"] = f"{grid[0]},{grid[1]}"
        return headers


def _encode_json(result: Encoded) -> Answer:
    grid = result.batch.grid
    return json_answer({
        "model": result.model,
        "latent_shape": list(result.latent_shape),
        "dtype": "float32",
        "count": len(result.latents),
        "grid": list(grid) if grid is not None else None,
        "grids": [list(g) for g in result.batch.grids],
        "cached": result.cached,
        "refined": result.refined,
        "latents": np.ascontiguousarray(result.latents),
    }, result.headers())


def _encode_npy(result: Encoded) -> Answer:
    return Answer(npy_bytes(result.latents), NPY, result.headers())


@dataclass(frozen=True)
class Decoded:
    """What ``/v1/decode`` answers."""

    model: str
    tiles: np.ndarray  # uint8 [N, 32, 32, 3] (RGB models) or [N, 32, 32, 4] (RGBA models)
    columns: int | None  # sheet width asked for (query, else body), None: the default
    layout: Layout = PLAIN  # the PNG sheet's margin and spacing


def check_sheet(count: int, columns: int | None, layout: Layout, max_pixels: int) -> None:
    """413 when the PNG sheet of ``count`` tiles, ``columns`` wide and laid out by ``layout``,
    would exceed ``max_pixels`` (the limit images sent to the service have too)."""
    width = columns or default_columns(count)
    _, height_px, width_px = sheet_shape(count, width, layout.margin, layout.spacing)
    pixels = height_px * width_px
    if pixels > max_pixels:
        raise TooLarge(f"a sheet of {count} tiles, {width} columns, margin {layout.margin} and spacing {layout.spacing} "
                       f"would be {pixels} pixels; the limit is {max_pixels}: use fewer columns, less margin or "
                       f"spacing, or ask for npy (Accept: application/x-npy)")


def _decode_png(result: Decoded) -> Answer:
    width = result.columns or default_columns(len(result.tiles))
    rows = sheet_shape(len(result.tiles), width)[0]
    headers = {"X-Tessera-Model": result.model, "X-Tessera-Grid": f"{rows},{width}"}
    sheet = assemble(result.tiles, width, result.layout.margin, result.layout.spacing)
    return Answer(codecs.png_bytes(sheet), PNG, headers)


def _decode_npy(result: Decoded) -> Answer:
    return Answer(npy_bytes(result.tiles), NPY, {"X-Tessera-Model": result.model})


def _decode_json(result: Decoded) -> Answer:
    body = {"model": result.model, "count": len(result.tiles), "tiles": codecs.tiles_base64(result.tiles)}
    return json_answer(body, {"X-Tessera-Model": result.model})


ENCODE_WRITERS: dict[str, Callable[[Encoded], Answer]] = {JSON: _encode_json, NPY: _encode_npy}
DECODE_WRITERS: dict[str, Callable[[Decoded], Answer]] = {PNG: _decode_png, NPY: _decode_npy, JSON: _decode_json}


def writer(accept: str | None, writers: dict[str, Callable]) -> Callable:
    """The writer an ``Accept`` header prefers; 406 when it accepts none of them."""
    return writers[codecs.negotiate(accept, tuple(writers))]
