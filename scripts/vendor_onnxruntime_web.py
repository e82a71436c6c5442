"""Vendor onnxruntime-web for the demo page (``/demo``): its wasm-only bundle, copied from the npm
package into ``service/static/vendor/onnxruntime-web/`` (gitignored, shipped in the wheel).

    python3 scripts/vendor_onnxruntime_web.py      # `make venv` and `make test` run it

Nothing is fetched at run time: the page loads these files from the service. The package comes
from the npm registry through ``npm pack`` at the pinned version and is checked against its
pinned sha512 before anything is copied. Standard library only, so it runs before the venv exists.

Where npm or the registry is missing it says so and exits 0 (the page then decodes the slider's
mixes with ``POST /v1/decode``); under ``CI`` it exits 1 instead, since ``.ci/run`` installs npm.
A folder that already holds the pinned version (``manifest.json``, file sizes and sha256) is left
as it is, so a rerun costs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "onnxruntime-web"
VERSION = "1.30.0"
INTEGRITY = "sha512-q0y+JrrtukXSzsBWEMccVfqX25LRmosXHF+CaRJmg8pZClzcV7svNc4rKY3jL02Vb7QmRMDs1SigqR4CXAfKYQ=="
# the wasm-only build (no WebGL/WebGPU): the UMD bundle, the wasm glue it imports and the wasm
# binary; package.json records the version and the MIT licence. ~14.3 MB in all; the "all" and
# WebGPU builds need the 28 MB JSEP wasm instead.
FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm", "package.json")
ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT / "service" / "static" / "vendor" / PACKAGE
MANIFEST = "manifest.json"
NPM_TIMEOUT_S = 600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def up_to_date(dest: Path) -> bool:
    """Whether ``dest`` holds exactly the pinned version's files (as its manifest lists them)."""
    try:
        manifest = json.loads((dest / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest.get("version") != VERSION or sorted(manifest.get("files", {})) != sorted(FILES):
        return False
    for name, entry in manifest["files"].items():
        path = dest / name
        if not path.is_file() or path.stat().st_size != entry["size"] or sha256(path) != entry["sha256"]:
            return False
    return True


def npm_pack(workdir: Path) -> Path:
    """The package tarball, fetched by ``npm pack`` into ``workdir``."""
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError("npm not found (Debian: apt-get install -y npm)")
    spec = f"{PACKAGE}@{VERSION}"
    try:
        done = subprocess.run([npm, "pack", spec, "--json", "--silent", "--pack-destination", str(workdir)],
                              cwd=workdir, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"`npm pack {spec}` took longer than {NPM_TIMEOUT_S} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"`npm pack {spec}` failed ({done.returncode}): {last}")
    tarballs = sorted(workdir.glob("*.tgz"))
    if len(tarballs) != 1:
        raise RuntimeError(f"`npm pack {spec}` left {len(tarballs)} tarballs, expected one")
    return tarballs[0]


def check_integrity(tarball: Path) -> None:
    algorithm, _, expected = INTEGRITY.partition("-")
    digest = hashlib.new(algorithm)
    digest.update(tarball.read_bytes())
    found = base64.b64encode(digest.digest()).decode()
    if found != expected:
        raise RuntimeError(f"{tarball.name}: {algorithm} {found} is not the pinned {expected}; refusing to vendor it")


def extract(tarball: Path, into: Path) -> dict[str, dict]:
    """Copy ``FILES`` out of the tarball's ``package/dist`` (``package.json`` from ``package/``)."""
    wanted = {f"package/{'' if name == 'package.json' else 'dist/'}{name}": name for name in FILES}
    entries: dict[str, dict] = {}
    with tarfile.open(tarball, "r:gz") as archive:
        for member in archive.getmembers():
            name = wanted.get(member.name)
            if name is None or not member.isfile():
                continue
            source = archive.extractfile(member)
            target = into / name
            with open(target, "wb") as out:
                shutil.copyfileobj(source, out)
            entries[name] = {"size": target.stat().st_size, "sha256": sha256(target)}
    missing = sorted(set(FILES) - set(entries))
    if missing:
        raise RuntimeError(f"{tarball.name} lacks {missing}")
    return entries


def vendor(dest: Path = DEST) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ort-web-", dir=dest.parent) as tmp:
        workdir, staged = Path(tmp) / "pack", Path(tmp) / PACKAGE
        workdir.mkdir()
        staged.mkdir()
        tarball = npm_pack(workdir)
        check_integrity(tarball)
        entries = extract(tarball, staged)
        manifest = {"package": PACKAGE, "version": VERSION, "integrity": INTEGRITY, "files": entries}
        (staged / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        staged.rename(dest)  # same file system: the folder appears whole or not at all


def main() -> int:
    if up_to_date(DEST):
        return 0
    try:
        vendor()
    except (RuntimeError, OSError, tarfile.TarError) as exc:
        print(f"vendor {PACKAGE}@{VERSION}: {exc}", file=sys.stderr)
        if os.environ.get("CI"):
            return 1
        print(f"vendor {PACKAGE}@{VERSION}: skipped; the demo page will decode on the server (POST /v1/decode)",
              file=sys.stderr)
        return 0
    size = sum(path.stat().st_size for path in DEST.iterdir())
    print(f"vendored {PACKAGE}@{VERSION} into {DEST.relative_to(ROOT)} ({size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
