"""Fetching a Debian package of game art without installing it.

``apt-get download`` puts the ``.deb`` into a scratch folder and ``dpkg-deb -x`` unpacks it
there (no root, nothing installed). A ``.deb`` already on disk can be given instead.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from pathlib import Path

from tessera.training.errors import DataError

log = logging.getLogger(__name__)


def run(cmd: list[str], cwd: Path | None = None) -> str:
    if shutil.which(cmd[0]) is None:
        raise DataError(f"`{cmd[0]}` is not available; on a non-Debian system use `tessera data folder` on the tiles")
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DataError(f"`{' '.join(cmd)}` failed: {last}")
    return done.stdout.strip()


def installed_version(package: str, marker: Path) -> str | None:
    """Version of the installed ``package``, or None when it is not installed (or ``marker``,
    a folder it installs, is missing)."""
    if shutil.which("dpkg-query") is None:
        return None
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${db:Status-Abbrev} ${Version}", package], capture_output=True, text=True
    )
    status, _, version = done.stdout.strip().partition(" ")
    if done.returncode != 0 or not status.startswith("ii") or not (Path("/") / marker).is_dir():
        return None
    return version


def unpack_deb(deb: Path, scratch: Path, package: str) -> tuple[Path, str]:
    """Unpack a ``.deb`` of ``package`` under ``scratch``; return the unpacked root and its version."""
    if not deb.is_file():
        raise DataError(f"package file {deb} does not exist")
    version = run(["dpkg-deb", "-f", str(deb), "Version"])
    found = run(["dpkg-deb", "-f", str(deb), "Package"])
    if found != package:
        raise DataError(f"{deb} is the package {found!r}, not {package!r}")
    root = scratch / package
    run(["dpkg-deb", "-x", str(deb), str(root)])
    return root, version


def download_deb(package: str, scratch: Path) -> Path:
    """``apt-get download`` ``package`` into ``scratch`` and return the ``.deb``."""
    log.info("downloading %s with apt-get", package)
    run(["apt-get", "download", package], cwd=scratch)
    debs = sorted(scratch.glob(f"{package}_*.deb"))
    if not debs:
        raise DataError(f"`apt-get download {package}` left no .deb in {scratch}")
    return debs[0]


def package_root(package: str, marker: Path, scratch: Path, deb: Path | None = None) -> tuple[Path, str]:
    """Where ``package``'s files are and its version: ``deb`` unpacked when given, else the
    installed package, else a fresh download unpacked into ``scratch``."""
    version = None if deb is not None else installed_version(package, marker)
    if version is not None:
        return Path("/"), version
    return unpack_deb(deb if deb is not None else download_deb(package, scratch), scratch, package)
