"""The default data set: Dungeon Crawl Stone Soup tiles from Debian's ``crawl-tiles-data`` (CC0).

The sheets are taken from the installed package when present, otherwise from a ``.deb`` that
``apt-get download`` fetches into a scratch folder and ``dpkg-deb -x`` unpacks (nothing is
installed, no root needed).
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
from pathlib import Path

from training.data import Sheet, build_dataset, sheet_hashes
from training.errors import DataError

log = logging.getLogger(__name__)

PACKAGE = "crawl-tiles-data"
TILES_DIR = Path("usr/share/crawl/dat/tiles")  # inside the package
SHEETS = ("main", "floor", "wall", "feat", "player", "gui", "icons")  # the 32x32 tile sheets
LICENSE = "CC0-1.0"


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not available; on a non-Debian system use `tessera data folder` on the tiles")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`{' '.join(cmd)}` failed: {last}")
    return done.stdout.strip()


def installed_version() -> str | None:
    """Version of the installed package, or None when it is not installed."""
    if shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", PACKAGE], capture_output=True, text=True
    )
    status, _, version = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not status.startswith("ii") or not (Path("/") / TILES_DIR).is_dir():
        return None
    return version


def unpack_deb(deb: Path, scratch: Path) -> tuple[Path, str]:
    """Unpack a ``.deb`` of the package into ``scratch``; return its tiles folder and version."""
    if not deb.is_file():
        raise DataError(f"package file {deb} does not exist")
    version = _run(["dpkg-deb", "-f", str(deb), "Version"])
    package = _run(["dpkg-deb", "-f", str(deb), "Package"])
    if package != PACKAGE:
        raise DataError(f"{deb} is the package {package!r}, not {PACKAGE!r}")
    _run(["dpkg-deb", "-x", str(deb), str(scratch / "root")])
    return scratch / "root" / TILES_DIR, version


def download_deb(scratch: Path) -> Path:
    """``apt-get download`` the package into ``scratch`` and return the ``.deb``."""
    log.info("downloading %s with apt-get", PACKAGE)
    _run(["apt-get", "download", PACKAGE], cwd=scratch)
    debs = sorted(scratch.glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {PACKAGE}` left no .deb in {scratch}")
    return debs[0]


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
        scratch = Path(scratch_name)
        version = None if deb is not None else installed_version()
        if version is not None:
            tiles_dir = Path("/") / TILES_DIR
        else:
            tiles_dir, version = unpack_deb(Path(deb) if deb is not None else download_deb(scratch), scratch)
        sheets = dcss_sheets(tiles_dir)
        source = {
            "kind": "debian-package",
            "package": PACKAGE,
            "version": version,
            "license": LICENSE,
            "sheets": sheet_hashes(sheets),
        }
        return build_dataset(sheets, out, tile_size=32, source=source, name="dcss")
