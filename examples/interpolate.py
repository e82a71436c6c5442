"""Walk through latent space from one tile of a sheet to another.

    python examples/interpolate.py [SHEET] [--a 385] [--b 840] [--steps 8] [-o interpolation.png]

Encodes every tile of a Dungeon Crawl Stone Soup sheet (by default ``floor.png`` of Debian's
``crawl-tiles-data``; the default tiles --a/--b are grass and lava on it), mixes the latents of tiles
A and B as (1 - t) * z_a + t * z_b for evenly spaced t, decodes the mixes and writes one strip:
A's reconstruction, the in-betweens, B's reconstruction. Needs a running server
(`make serve`); the address comes from --url or TESSERA_URL.

Get the sheets without installing the game:
    mkdir -p data && (cd data && apt-get download crawl-tiles-data && dpkg-deb -x crawl-tiles-data_*.deb .)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from tessera.client import Client, TesseraError

SHEET_CANDIDATES = (
    Path("/usr/share/crawl/dat/tiles/floor.png"),  # apt-get install crawl-tiles-data
    Path("data/usr/share/crawl/dat/tiles/floor.png"),  # dpkg-deb -x crawl-tiles-data_*.deb data/
)


def default_sheet() -> Path | None:
    return next((p for p in SHEET_CANDIDATES if p.is_file()), None)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sheet", nargs="?", type=Path, default=default_sheet(), help="DCSS sheet (default: floor.png)")
    parser.add_argument("--a", type=int, default=385, help="index of the first tile, row-major (default: %(default)s)")
    parser.add_argument("--b", type=int, default=840, help="index of the last tile (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=8, help="in-betweens to decode (default: %(default)s)")
    parser.add_argument("--scale", type=int, default=4, help="enlarge the strip this many times (default: %(default)s)")
    parser.add_argument("-o", "--output", type=Path, default=Path("interpolation.png"))
    parser.add_argument("--url", default=os.environ.get("TESSERA_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--model", help="model name (default: the server's default)")
    args = parser.parse_args()
    if args.sheet is None:
        parser.error("no DCSS sheet found; pass one, or unpack one with: "
                     "mkdir -p data && (cd data && apt-get download crawl-tiles-data && dpkg-deb -x crawl-tiles-data_*.deb .)")

    try:
        with Client(args.url, api_key=os.environ.get("TESSERA_API_KEY")) as client:
            with tqdm(desc="encode", unit="tile", leave=False) as bar:

                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.update(done - bar.n)

                # crop=True: some DCSS sheets end in a partial row of tiles (main.png is 1000 pixels tall)
                result = client.encode(args.sheet, args.model, crop=True, progress=progress)
            rows, cols = result.grid
            for index in (args.a, args.b):
                if not 0 <= index < len(result.latents):
                    parser.error(f"tile {index} is outside the sheet's {rows}x{cols} = {rows * cols} tiles")
            z_a, z_b = result.latents[args.a], result.latents[args.b]
            t = np.linspace(0.0, 1.0, args.steps + 2, dtype=np.float32).reshape(-1, *[1] * z_a.ndim)  # both ends
            mixes = (1 - t) * z_a + t * z_b  # (steps + 2, *latent_shape)
            strip = client.decode_sheet(mixes, columns=len(mixes), model=result.model)
    except TesseraError as exc:
        print(f"interpolate: {exc}", file=sys.stderr)
        return 1

    strip = strip.resize((strip.width * args.scale, strip.height * args.scale), Image.NEAREST)
    strip.save(args.output)
    print(f"{args.sheet}: {len(result.latents)} tiles ({rows}x{cols}), model {result.model}, "
          f"{result.cached} latents from the server's cache")
    print(f"tile {args.a} (row {args.a // cols}, col {args.a % cols}) -> tile {args.b} (row {args.b // cols}, "
          f"col {args.b % cols}): latent distance {float(np.linalg.norm(z_b - z_a)):.3f}, {args.steps} in-betweens")
    print(f"wrote {args.output} ({strip.width}x{strip.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
