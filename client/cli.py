"""Client subcommands of `tessera`: encode, decode, roundtrip, models.

Exit codes: 0 done; 1 the server refused or failed the request; 2 bad command line;
3 an input or output file is unusable (not an image, sides not multiples of 32, not a latents
file, cannot write); 4 the server is unreachable, too slow or still overloaded after retries;
130 interrupted. Failures print one line to stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tessera.client import errors
from tessera.client.results import EncodeResult, Models
from tessera.client.sync_client import Client
from tessera.client.tiles import (
    TILE,
    assemble_sheet,
    cut_atlas,
    cut_sheet,
    grid_of,
    image_pixels,
    load_image,
    read_tileset,
    to_channels,
)
from tessera.tiles import DECODERS, MAX_REFINE_STEPS
from tessera.tiles.tsx import write_tsx

DEFAULT_URL = "http://127.0.0.1:8000"

EXIT_OK = 0
EXIT_SERVER = 1  # the server answered with an error
EXIT_INPUT = 3  # a file given on the command line is unusable
EXIT_UNAVAILABLE = 4  # no answer: down, timed out, or overloaded after every retry
EXIT_INTERRUPTED = 130


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add encode, decode, roundtrip and models to the `tessera` command line."""
    p = subparsers.add_parser("encode", help="encode a sheet (or tile) image, or a Tiled .tsx, to a .npz of latents")
    p.add_argument("sheet", type=Path, help="image whose sides are multiples of 32 (PNG, GIF, ...), or a Tiled "
                                            "tileset (.tsx: its image, margin, spacing and trans colour are used)")
    p.add_argument("-o", "--output", type=Path, help="where to write the .npz (default: SHEET with .npz)")
    _add_atlas_options(p, "the sheet's")
    _add_model_options(p)
    _add_refine_option(p)
    p.set_defaults(func=_guarded(_encode))

    p = subparsers.add_parser("decode", help="decode a .npz written by `tessera encode` back to a sheet image")
    p.add_argument("latents", type=Path, help=".npz written by `tessera encode`")
    p.add_argument("-o", "--output", type=Path, help="where to write the PNG (default: LATENTS with .png)")
    p.add_argument("--columns", type=int, help="tiles per row (default: the encoded sheet's grid)")
    _add_atlas_options(p, "the encoded sheet's")
    p.add_argument("--tsx", action="store_true", help="also write a Tiled tileset (.tsx) beside the PNG")
    _add_model_options(p, default_help="the model stored in the .npz")
    _add_decoder_option(p)
    p.set_defaults(func=_guarded(_decode))

    p = subparsers.add_parser("roundtrip", help="encode and decode a sheet; print L1, PSNR and compression")
    p.add_argument("sheet", type=Path, help="image whose sides are multiples of 32")
    p.add_argument("-o", "--output", type=Path, default=Path("compare.png"),
                   help="side-by-side image: original left, reconstruction right (default: %(default)s)")
    _add_model_options(p)
    _add_refine_option(p)
    _add_decoder_option(p)
    p.set_defaults(func=_guarded(_roundtrip))

    p = subparsers.add_parser("models", help="list the server's models and limits")
    p.add_argument("--json", action="store_true", help="print the server's answer as JSON")
    _add_server_options(p)
    p.set_defaults(func=_guarded(_models))


def _add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", default=os.environ.get("TESSERA_URL", DEFAULT_URL),
                   help="server address; $TESSERA_URL sets the default (now: %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY"),
                   help="API key when the server requires one; $TESSERA_API_KEY sets the default")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default: %(default)s)")


def _add_atlas_options(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--margin", type=int, help=f"pixels around the tiles, as in Tiled (default: {default}, else 0)")
    p.add_argument("--spacing", type=int, help=f"pixels between tiles, as in Tiled (default: {default}, else 0)")


def _refine_steps(text: str) -> int:
    if not (text.isascii() and text.isdigit() and int(text) <= MAX_REFINE_STEPS):
        raise argparse.ArgumentTypeError(f"expected a whole number from 0 to {MAX_REFINE_STEPS}, got {text!r}")
    return int(text)


def _add_refine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine", type=_refine_steps, default=0, metavar="STEPS",
                   help=f"encode effort: the server refines each latent for STEPS steps (0 to {MAX_REFINE_STEPS}) "
                        "through the decoder, for tiles closer to the original at more CPU (default: %(default)s)")


def _add_decoder_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoder", choices=DECODERS, default=DECODERS[0],
                   help="which of the model's decoders: faithful (its own) or sharp (crisp, pixel-art-like tiles, "
                        "where the model has one; `tessera models` lists them) (default: %(default)s)")


def _add_model_options(p: argparse.ArgumentParser, default_help: str = "the server's default") -> None:
    _add_server_options(p)
    p.add_argument("--model", help=f"model name (default: {default_help}); see `tessera models`")
    p.add_argument("--crop", action="store_true",
                   help="drop a partial last row/column of tiles instead of refusing the sheet")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


# ---- commands -----------------------------------------------------------------------------


def _sheet_tiles(args: argparse.Namespace) -> tuple[np.ndarray, tuple[int, int], int, int]:
    """The tiles of the sheet or .tsx on the command line, its grid, margin and spacing."""
    if args.sheet.suffix.lower() == ".tsx":
        tiles, grid, tileset = read_tileset(args.sheet)
        for flag in ("margin", "spacing"):
            given = getattr(args, flag)
            if given is not None and given != getattr(tileset, flag):
                raise errors.InputError(f"--{flag} {given} differs from the {getattr(tileset, flag)} in {args.sheet}")
        return tiles, grid, tileset.margin, tileset.spacing
    margin, spacing = args.margin or 0, args.spacing or 0
    pixels = image_pixels(load_image(args.sheet))
    if margin or spacing:
        tiles, grid = cut_atlas(pixels, margin, spacing, name=str(args.sheet))
    else:
        tiles, grid = cut_sheet(pixels, crop=args.crop, name=str(args.sheet))
    return tiles, grid, margin, spacing


def _encode(args: argparse.Namespace) -> int:
    output = args.output or args.sheet.with_suffix(".npz")
    tiles, (rows, cols), margin, spacing = _sheet_tiles(args)
    with _client(args) as tessera, _progress("encode", args.quiet) as progress:
        result = tessera.encode(tiles, args.model, refine=args.refine, progress=progress)
    _write(output, functools.partial(
        np.savez, latents=result.latents, grid=np.array((rows, cols)), model=np.array(result.model),
        tile_size=np.array(TILE), latent_shape=np.array(result.latent_shape), source=np.array(args.sheet.name),
        margin=np.array(margin), spacing=np.array(spacing),
    ))
    atlas = f", margin {margin}, spacing {spacing}" if margin or spacing else ""
    print(f"{args.sheet}: {len(result.latents)} tiles ({rows}x{cols}{atlas}) -> {output} "
          f"[model {result.model}, latents {_shape(result.latent_shape)} float32, {result.cached} from cache"
          + (f", refined {result.refined} steps" if result.refined is not None else "") + "]")
    return EXIT_OK


def _decode(args: argparse.Namespace) -> int:
    from PIL import Image

    latents, grid, model, layout = _read_latents(args.latents)
    output = args.output or args.latents.with_suffix(".png")
    columns = args.columns or (grid[1] if grid else None)
    margin = layout.get("margin", 0) if args.margin is None else args.margin
    spacing = layout.get("spacing", 0) if args.spacing is None else args.spacing
    with _client(args) as tessera, _progress("decode", args.quiet) as progress:
        tiles = tessera.decode(latents, args.model or model, decoder=args.decoder, progress=progress)
    pixels = assemble_sheet(tiles, columns, margin, spacing)
    _write(output, Image.fromarray(pixels).save, format="PNG")
    height, width = pixels.shape[:2]
    print(f"{args.latents}: {len(latents)} tiles -> {output} ({width}x{height} pixels)")
    if args.tsx:
        columns = columns or grid_of(height, width, TILE, margin, spacing)[1]
        tsx = write_tsx(output.with_suffix(".tsx"), image=output.name, columns=columns, count=len(tiles),
                        size=(width, height), margin=margin, spacing=spacing)
        print(f"wrote {tsx} (Tiled tileset of {output.name})")
    return EXIT_OK


def _roundtrip(args: argparse.Namespace) -> int:
    tiles, (rows, cols) = cut_sheet(image_pixels(load_image(args.sheet)), crop=args.crop, name=str(args.sheet))
    with _client(args) as tessera:
        info = tessera.models()
        with _progress("encode", args.quiet) as progress:
            encoded: EncodeResult = tessera.encode(tiles, args.model, refine=args.refine, progress=progress)
        with _progress("decode", args.quiet) as progress:
            decoded = tessera.decode(encoded, decoder=args.decoder, progress=progress)
    channels = decoded.shape[-1]  # what the model keeps: RGB (alpha multiplied in) or RGBA
    original, recon = assemble_sheet(to_channels(tiles, channels), cols), assemble_sheet(decoded, cols)
    # colours multiplied by alpha, as the models' validation measures them (hidden colours do not count)
    diff = to_channels(original, 3).astype(np.float64) / 255 - to_channels(recon, 3).astype(np.float64) / 255
    l1, mse = float(np.abs(diff).mean()), float((diff**2).mean())
    psnr = 10 * np.log10(1 / mse) if mse > 0 else float("inf")
    alpha = ""
    if channels == 4:
        covered, kept = original[..., 3] >= 128, recon[..., 3] >= 128
        alpha = f"  alpha IoU {(covered & kept).sum() / max(1, (covered | kept).sum()):.4f}"
    _write(args.output, _side_by_side(original, recon).save, format="PNG")

    model = next((m for m in info.models if m.name == encoded.model), None)
    val_psnr = model.metrics.get("val_psnr") if model else None
    reference = f" (checkpoint validation PSNR {val_psnr:.2f} dB)" if isinstance(val_psnr, (int, float)) else ""
    values = int(np.prod(encoded.latent_shape))
    count = len(tiles)
    refined = f", latents refined {encoded.refined} steps" if encoded.refined is not None else ""
    print(f"{args.sheet}: {count} tiles ({rows}x{cols}), model {encoded.model}{refined}")
    print(f"L1 {l1:.4f}  PSNR {psnr:.2f} dB{alpha}{reference}")
    pixel_values = channels * TILE * TILE
    kind = "RGBA" if channels == 4 else "RGB"
    print(f"compression {pixel_values / values:.0f}x: {pixel_values} pixel values -> {values} latent values per tile; "
          f"{kind} {_size(count * pixel_values)} -> float32 latents {_size(count * values * 4)} "
          f"({pixel_values / (values * 4):.0f}x), float16 {_size(count * values * 2)} "
          f"({pixel_values / (values * 2):.0f}x); PNG file {_size(args.sheet.stat().st_size)}")
    print(f"wrote {args.output} (left: original, right: reconstruction)")
    return EXIT_OK


def _models(args: argparse.Namespace) -> int:
    with _client(args) as tessera:
        info = tessera.models()
    if args.json:
        print(json.dumps(asdict(info), indent=2))
        return EXIT_OK
    print(_models_table(info))
    return EXIT_OK


# ---- helpers ------------------------------------------------------------------------------


def _models_table(info: Models) -> str:
    header = ("NAME", "ARCH", "PARAMS", "LATENT", "RATIO", "VAL L1", "VAL PSNR", "DECODERS")
    rows = [header]
    for m in info.models:
        l1, psnr = m.metrics.get("val_l1"), m.metrics.get("val_psnr")
        rows.append((
            m.name + (" *" if m.name == info.default else ""),
            m.arch,
            _count(m.params),
            _shape(m.latent_shape),
            f"{m.compression_ratio:g}x",
            f"{l1:.4f}" if isinstance(l1, (int, float)) else "-",
            f"{psnr:.2f} dB" if isinstance(psnr, (int, float)) else "-",
            ",".join(m.decoders),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    lim = info.limits
    lines.append("")
    lines.append(f"* default. Limits per request: {lim.max_tiles_per_request} tiles, {_size(lim.max_body_bytes)} body; "
                 f"batches of up to {lim.max_batch_tiles} tiles.")
    return "\n".join(lines)


def _read_latents(path: Path) -> tuple[np.ndarray, tuple[int, int] | None, str | None, dict[str, int]]:
    """latents, grid, model name and atlas layout (margin, spacing) from a .npz written by `tessera encode`."""
    try:
        with np.load(path, allow_pickle=False) as data:
            if "latents" not in data.files:
                raise errors.InputError(f"{path}: no 'latents' array; expected a .npz written by `tessera encode`")
            tile_size = int(data["tile_size"]) if "tile_size" in data.files else TILE
            if tile_size != TILE:
                raise errors.InputError(f"{path}: tiles of {tile_size} pixels; this server works on {TILE}x{TILE} tiles")
            grid = tuple(int(v) for v in data["grid"]) if "grid" in data.files and data["grid"].size == 2 else None
            model = str(data["model"]) if "model" in data.files else None
            layout = {key: int(data[key]) for key in ("margin", "spacing") if key in data.files}
            return data["latents"], grid, model, layout
    except FileNotFoundError:
        raise errors.InputError(f"{path}: no such file") from None
    except (ValueError, OSError) as exc:
        raise errors.InputError(f"{path}: {_what_it_is(path) or f'not a .npz of latents ({exc})'}") from None


def _what_it_is(path: Path) -> str | None:
    """What a file that is not a .npz of latents is, when its first bytes tell (an image: it
    needs encoding first), else None."""
    try:
        with open(path, "rb") as file:
            head = file.read(12)
    except OSError:
        return None
    images = {b"\x89PNG": "PNG", b"GIF8": "GIF", b"\xff\xd8\xff": "JPEG", b"BM": "BMP"}
    kind = next((name for magic, name in images.items() if head.startswith(magic)), None)
    if kind is None and head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "WebP"
    if kind is None:
        return None
    return (f"a {kind} image, not latents; `tessera decode` reads the .npz that `tessera encode` writes: "
            f"tessera encode {path} -o latents.npz, then tessera decode latents.npz")


def _side_by_side(left: np.ndarray, right: np.ndarray, gap: int = 8) -> Any:
    from PIL import Image

    height, width = left.shape[:2]
    canvas = np.full((height, 2 * width + gap, left.shape[-1]), 255, dtype=np.uint8)  # white gutter between them
    canvas[:, :width], canvas[:, width + gap :] = left, right
    return Image.fromarray(canvas)


def _write(path: Path, save: Callable[..., Any], **kwargs: Any) -> None:
    try:
        with open(path, "wb") as f:
            save(f, **kwargs)
    except OSError as exc:
        raise errors.InputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _client(args: argparse.Namespace) -> Client:
    return Client(args.url, args.api_key, timeout=args.timeout)


@contextlib.contextmanager
def _progress(desc: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A progress callback drawing a tqdm bar on stderr (hidden when quiet or not a terminal)."""
    from tqdm import tqdm

    with tqdm(desc=desc, unit="tile", disable=True if quiet else None, leave=False, file=sys.stderr) as bar:

        def update(done: int, total: int) -> None:
            bar.total = total
            bar.update(done - bar.n)

        yield update


def _guarded(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the client's exceptions into one line on stderr and an exit code."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except errors.InputError as exc:
            return _fail(str(exc), EXIT_INPUT)
        except errors.ConnectError as exc:
            return _fail(f"{exc} Start it with `tessera serve`, or point --url / TESSERA_URL at it.", EXIT_UNAVAILABLE)
        except (errors.TransportError, errors.UnavailableError, errors.DeadlineExceededError) as exc:
            return _fail(str(exc), EXIT_UNAVAILABLE)
        except errors.AuthenticationError as exc:
            return _fail(f"{exc} (set --api-key or TESSERA_API_KEY)", EXIT_SERVER)
        except errors.APIError as exc:
            return _fail(f"server refused: {exc}", EXIT_SERVER)
        except KeyboardInterrupt:
            return _fail("interrupted", EXIT_INTERRUPTED)

    return run


def _fail(message: str, code: int) -> int:
    print(f"tessera: error: {message}", file=sys.stderr)
    return code


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(str(d) for d in shape)


def _count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    return f"{n / 1024:.1f} KiB" if n < 1024**2 else f"{n / 1024**2:.1f} MiB"
