"""The default data set: Dungeon Crawl Stone Soup tiles from Debian's ``crawl-tiles-data`` (CC0).

The sheets are taken from the installed package when present, otherwise from a ``.deb`` that
``apt-get download`` fetches into a scratch folder and ``dpkg-deb -x`` unpacks (nothing is
installed, no root needed).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tessera.training.data import Sheet, build_dataset, sheet_hashes
from tessera.training.debian import package_root
from tessera.training.errors import DataError

PACKAGE = "crawl-tiles-data"
TILES_DIR = Path("usr/share/crawl/dat/tiles")  # inside the package
SHEETS = ("main", "floor", "wall", "feat", "player", "gui", "icons")  # the 32x32 tile sheets
LICENSE = "CC0-1.0"


def dcss_sheets(tiles_dir: Path) -> list[Sheet]:
    sheets = []
    for stem in SHEETS:
        path = tiles_dir / f"{stem}.png"
        if not path.is_file():
            raise DataError(f"{path} is missing; is {tiles_dir} the tiles folder of {PACKAGE}?")
        sheets.append(Sheet(f"{stem}.png", path))
    return sheets


def build_dcss(out: str | Path, deb: str | Path | None = None) -> dict:
    """Build the DCSS data set into ``out`` from the installed package, ``deb``, or a download."""
    with tempfile.TemporaryDirectory(prefix="tessera-dcss-") as scratch_name:
        root, version = package_root(PACKAGE, TILES_DIR, Path(scratch_name), Path(deb) if deb is not None else None)
        sheets = dcss_sheets(root / TILES_DIR)
        source = {
            "kind": "debian-package",
            "package": PACKAGE,
            "version": version,
            "license": LICENSE,
            "sheets": sheet_hashes(sheets),
        }
        return build_dataset(sheets, out, tile_size=32, source=source, name="dcss")
