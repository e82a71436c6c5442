"""The multi-artist training corpus: 32x32 sprites from an explicit list of Debian packages.

    tessera data corpus --out data/corpus

Each package is fetched as ``tessera data dcss`` does (installed copy, a given ``.deb``, or
``apt-get download`` + ``dpkg-deb -x``). A package holds one or more *tilesets*, and every
tileset is one validation *source*:

- ``crawl-tiles-data`` (Dungeon Crawl Stone Soup, CC0): one tileset, its 32x32 sheets cut on a
  32 grid, exactly as ``tessera data dcss`` cuts them;
- ``cataclysm-dda-data`` (CC-BY-SA-3.0): the tilesets under ``gfx/*/tile_config.json``. Each
  JSON names the sheets of the tileset and their sprite size (``sprite_width`` /
  ``sprite_height``, else the tileset's ``tile_info`` default). Only sheets whose sprites are
  32x32 are taken, cut on that grid; the ids of their sprites follow the game's rule (a sheet's
  first id is the number of sprites in the sheets listed before it);
- ``crossfire-client-images`` (Crossfire, GPL): the client's base image set, one file
  (``crossfire.base``) of ``IMAGE <bytes> <face>`` records, each followed by that face's PNG;
  faces are 32x32 or, for objects bigger than one square, a multiple of 32 on each side, cut on
  the 32 grid;
- ``supertux-data`` (SuperTux, GPL-3+): the tiles ``images/tiles.strf`` lays out, an
  S-expression whose ``(tiles (width W) (height H) (ids ...) (image "..."))`` entries put the
  tile with id ``ids[k]`` in cell ``(k % W, k // W)`` of a sheet of 32x32 cells (id 0: no tile);
  animated entries (``images``) and sheets of another cell size are left out;
- ``angband-data`` (Angband, CC-BY-3.0): David Gervais' 32x32 set, the sheet that
  ``xtra/graf/graphics.txt`` names for 32x32 tiles, cut on its grid.

Sources are processed in the order of ``PACKAGES``, and new packages go at its end. A tile is dropped when it is one colour, or when the same pixels
already came from this or an earlier source. Each source is then shuffled with a fixed seed and
every 20th tile goes to validation, so the DCSS source gives byte-for-byte the split of
``tessera data dcss``. The folder holds ``train.npy`` (every source's training tiles),
``val.npy`` (every source's validation tiles) and ``val-<source>.npy`` per source, each also as
``*-rgba.npy`` (the same tiles with their alpha, for RGBA models), and the manifest records for every tile its package, tileset, sheet, position, sprite id and licence.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tessera.training import dcss
from tessera.training.atomic import atomic_write_bytes, atomic_write_text
from tessera.training.data import FORMAT, FORMAT_VERSION, SPLIT_SEED, VAL_EVERY, manifest_json, npy_bytes
from tessera.training.debian import package_root
from tessera.training.errors import DataError
from tessera.tiles import premultiply
from tessera.training.tiles import TILE, constant_mask, sheet_tiles_rgba

CORPUS_VERSION = 1


@dataclass(frozen=True)
class SourceSheet:
    name: str  # path relative to the tileset's folder
    path: Path
    first_id: int  # sprite id of the sheet's top-left sprite; -1: the format has no sprite ids
    data: bytes | None = None  # the image's bytes, for an image packed inside the file at ``path``
    ids: tuple[int, ...] | None = None  # sprite id per cell, row-major; cells with id 0 are not cut

    def read(self) -> bytes:
        return self.path.read_bytes() if self.data is None else self.data


@dataclass(frozen=True)
class Tileset:
    source: str  # short name of the validation source: dcss, cdda-ultimatecataclysm, ...
    package: str
    tileset: str  # the tileset's own name (its folder in the package)
    license: str
    sheets: tuple[SourceSheet, ...]


@dataclass(frozen=True)
class Package:
    name: str  # Debian package
    license: str  # the licence of its art, from the package's copyright file
    marker: Path  # a folder the package installs, to tell whether it is installed
    tilesets: Callable[[Path], list[Tileset]]  # unpacked root -> its tilesets


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "", name.lower().replace("+", "plus"))


def dcss_tilesets(root: Path) -> list[Tileset]:
    sheets = dcss.dcss_sheets(root / dcss.TILES_DIR)
    return [Tileset("dcss", dcss.PACKAGE, "dcss", dcss.LICENSE,
                    tuple(SourceSheet(s.name, s.path, -1) for s in sheets))]


def image_size(path: Path, data: bytes | None = None) -> tuple[int, int]:
    """Width and height of an image file (or of ``data``, an image packed inside ``path``)."""
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as image:
            return image.size
    except OSError as exc:
        raise DataError(f"cannot read sheet {path}: {exc}") from exc


def sprite_count(path: Path, width: int, height: int) -> int:
    sheet_w, sheet_h = image_size(path)
    return (sheet_w // width) * (sheet_h // height)


def cdda_tileset_sheets(config_path: Path) -> list[SourceSheet]:
    """The 32x32 sheets of one Cataclysm tileset, from its ``tile_config.json``."""
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read tileset description {config_path}: {exc}") from exc
    info = (config.get("tile_info") or [{}])[0]
    default_w, default_h = int(info.get("width", 0)), int(info.get("height", 0))
    sheets, next_id = [], 0
    for entry in config.get("tiles-new", []):
        if "file" not in entry:
            continue
        width = int(entry.get("sprite_width", default_w))
        height = int(entry.get("sprite_height", default_h))
        path = config_path.parent / entry["file"]
        if width < 1 or height < 1:
            raise DataError(f"{config_path}: {entry['file']} has no sprite size and the tileset has no default")
        if not path.is_file():
            raise DataError(f"{config_path} names {entry['file']}, which is not in the package")
        first, next_id = next_id, next_id + sprite_count(path, width, height)
        # the ascii fallback sheet is a font the game tints at run time, not art
        if (width, height) == (TILE, TILE) and "ascii" not in entry:
            sheets.append(SourceSheet(entry["file"], path, first))
    return sheets


# The Cataclysm tilesets with 32x32 sprites by their own artists. ChibiUltica also has 32x32
# sprites, but it combines Ultica's world with MshockXotto+'s characters: cut after those two it
# adds 6 tiles of 5,198, so it is left out. The other tilesets are 10, 16 or 20 pixels.
CDDA_GFX = Path("usr/share/games/cataclysm-dda/gfx")
CDDA_TILESETS = ("UltimateCataclysm", "MshockXotto+", "Cuteclysm")


def cdda_tilesets(root: Path, names: tuple[str, ...] = CDDA_TILESETS) -> list[Tileset]:
    found = []
    for name in names:
        config_path = root / CDDA_GFX / name / "tile_config.json"
        if not config_path.is_file():
            raise DataError(f"{config_path} is missing; is {root} an unpacked cataclysm-dda-data?")
        sheets = cdda_tileset_sheets(config_path)
        if not sheets:
            raise DataError(f"{config_path} names no sheet of 32x32 sprites")
        found.append(Tileset(f"cdda-{slug(name)}", "cataclysm-dda-data", name, "CC-BY-SA-3.0", tuple(sheets)))
    return found


CROSSFIRE_DIR = Path("usr/share/games/crossfire-client")


def crossfire_faces(path: Path) -> list[SourceSheet]:
    """The faces of a Crossfire image file: ``IMAGE <bytes> <face>\\n`` and then the face's PNG."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc}; is it an unpacked crossfire-client-images?") from exc
    faces, pos = [], 0
    while pos < len(data):
        end = data.find(b"\n", pos)
        word, _, rest = data[pos:end if end >= 0 else len(data)].partition(b" ")
        size, _, name = rest.partition(b" ")
        if end < 0 or word != b"IMAGE" or not size.isdigit() or not name:
            raise DataError(f"{path}: no IMAGE record at byte {pos}")
        start, pos = end + 1, end + 1 + int(size)
        if pos > len(data):
            raise DataError(f"{path}: the image {name.decode(errors='replace')} is cut short")
        faces.append(SourceSheet(name.decode(errors="replace").removeprefix("./"), path, -1, data=data[start:pos]))
    return faces


def crossfire_tilesets(root: Path) -> list[Tileset]:
    faces = [face for face in crossfire_faces(root / CROSSFIRE_DIR / "crossfire.base")
             if min(image_size(face.path, face.data)) >= TILE]
    return [Tileset("crossfire", "crossfire-client-images", "base", "GPL", tuple(faces))]


SUPERTUX_IMAGES = Path("usr/share/games/supertux2/images")


def supertux_sheets(strf: Path) -> list[SourceSheet]:
    """The sheets of 32x32 tiles that a SuperTux ``tiles.strf`` lays out, each with its tile ids."""
    try:
        import sexpdata  # the train extra
    except ImportError as exc:
        raise DataError("reading SuperTux's tiles.strf needs sexpdata: pip install 'tessera[train]'") from exc
    try:
        text = strf.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read tile description {strf}: {exc}") from exc
    try:
        document = sexpdata.loads(text)
    except Exception as exc:  # sexpdata's own errors, and AttributeError/AssertionError on some broken input
        raise DataError(f"cannot read tile description {strf}: not an S-expression ({exc!r})") from exc
    sheets = []
    for entry in document[1:] if isinstance(document, list) else []:
        if not (isinstance(entry, list) and entry and entry[0] == sexpdata.Symbol("tiles")):
            continue
        fields = {item[0].value(): item[1:] for item in entry[1:]
                  if isinstance(item, list) and item and isinstance(item[0], sexpdata.Symbol)}
        image = fields.get("image", [None])[0]
        if not isinstance(image, str):  # an animation: its frames are listed under ``images``
            continue
        width, height = (fields.get(key, [None])[0] for key in ("width", "height"))
        ids = tuple(fields.get("ids", ()))
        if not (isinstance(width, int) and isinstance(height, int) and len(ids) == width * height
                and all(isinstance(i, int) for i in ids)):
            raise DataError(f"{strf}: the tiles of {image} are {len(ids)} ids for {width}x{height} cells")
        path = strf.parent / image
        if not path.is_file():
            raise DataError(f"{strf} names {image}, which is not in the package")
        if image_size(path) == (width * TILE, height * TILE):  # other cell sizes are hi-res copies
            sheets.append(SourceSheet(image, path, -1, ids=ids))
    return sheets


def supertux_tilesets(root: Path) -> list[Tileset]:
    sheets = supertux_sheets(root / SUPERTUX_IMAGES / "tiles.strf")
    if not sheets:
        raise DataError(f"{root / SUPERTUX_IMAGES / 'tiles.strf'} lays out no sheet of 32x32 tiles")
    return [Tileset("supertux", "supertux-data", "tiles", "GPL-3.0-or-later", tuple(sheets))]


ANGBAND_GRAF = Path("usr/share/angband/xtra/graf")


def angband_tilesets(root: Path) -> list[Tileset]:
    """The 32x32 tile set that Angband's ``graphics.txt`` lists (``I:32:32:<file>``)."""
    listing = root / ANGBAND_GRAF / "graphics.txt"
    try:
        lines = listing.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {listing}: {exc}; is it an unpacked angband-data?") from exc
    found, name = [], ""
    for line in lines:
        fields = line.strip().split(":")
        if fields[0] == "N" and len(fields) >= 3:
            name = ":".join(fields[2:])
        elif fields[0] == "I" and len(fields) >= 4 and fields[1:3] == [str(TILE), str(TILE)]:
            sheet = ":".join(fields[3:])
            found.append(Tileset("angband", "angband-data", name, "CC-BY-3.0",
                                 (SourceSheet(sheet, root / ANGBAND_GRAF / sheet, -1),)))
    if len(found) != 1:
        raise DataError(f"{listing} lists {len(found)} sets of 32x32 tiles, not one")
    return found


# The corpus, in this order (the order decides which copy of a duplicate tile is kept). A new
# package goes at the end, so that the earlier sources keep their tiles and validation splits.
PACKAGES: tuple[Package, ...] = (
    Package("crawl-tiles-data", "CC0-1.0", dcss.TILES_DIR, dcss_tilesets),
    Package("cataclysm-dda-data", "CC-BY-SA-3.0", CDDA_GFX, cdda_tilesets),
    Package("crossfire-client-images", "GPL", CROSSFIRE_DIR, crossfire_tilesets),
    Package("supertux-data", "GPL-3.0-or-later", SUPERTUX_IMAGES, supertux_tilesets),
    Package("angband-data", "CC-BY-3.0", ANGBAND_GRAF, angband_tilesets),
)


def packages_named(names: list[str] | None) -> tuple[Package, ...]:
    """The packages of the corpus that ``names`` lists, in the corpus's order (all when None)."""
    if not names:
        return PACKAGES
    known = [p.name for p in PACKAGES]
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise DataError(f"{unknown[0]!r} is not a package of the corpus; known: {known}")
    return tuple(p for p in PACKAGES if p.name in names)


def cut_tileset(tileset: Tileset) -> tuple[np.ndarray, list[list]]:
    """Every 32x32 cell of the tileset's sheets (RGBA, alpha kept) and a manifest row for each."""
    blocks, rows = [], []
    for sheet in tileset.sheets:
        tiles, coords = sheet_tiles_rgba(sheet.path, TILE, sheet.data)
        if sheet.ids is None:
            sprites = [-1 if sheet.first_id < 0 else sheet.first_id + k for k in range(len(coords))]
            cells = list(range(len(coords)))
        else:
            sprites, cells = list(sheet.ids), [k for k, sprite in enumerate(sheet.ids) if sprite]
        blocks.append(tiles[cells])
        for k in cells:
            x, y = coords[k]
            rows.append([tileset.package, tileset.tileset, sheet.name, x, y, sprites[k], tileset.license])
    return np.concatenate(blocks), rows


def split_sources(tilesets: list[Tileset], seed: int = SPLIT_SEED, val_every: int = VAL_EVERY) -> list[dict]:
    """Per tileset: its unique tiles split into train and val, duplicates of earlier ones dropped."""
    seen: set[bytes] = set()
    parts = []
    for tileset in tilesets:
        rgba, rows = cut_tileset(tileset)
        tiles = premultiply(rgba)  # what the RGB models see, and what duplicates are judged by
        constant = constant_mask(tiles)
        keep, within, across = [], 0, 0
        mine: set[bytes] = set()
        for i in np.flatnonzero(~constant):
            key = tiles[i].tobytes()
            if key in mine:
                within += 1
            elif key in seen:
                across += 1
            else:
                mine.add(key)
                keep.append(i)
        seen |= mine
        if len(keep) < 2:
            raise DataError(f"source {tileset.source} has only {len(keep)} unique tiles")
        order = np.random.default_rng(seed).permutation(len(keep))
        picked = np.asarray(keep)[order]
        is_val = np.arange(len(picked)) % val_every == 0
        index = {"train": picked[~is_val], "val": picked[is_val]}
        parts.append({
            "tileset": tileset,
            "tiles": {k: np.ascontiguousarray(tiles[v]) for k, v in index.items()},
            "rgba": {k: np.ascontiguousarray(rgba[v]) for k, v in index.items()},
            "rows": {k: [rows[i] for i in v] for k, v in index.items()},
            "counts": {"sheets": len(tileset.sheets), "cut": len(tiles), "constant": int(constant.sum()),
                       "duplicate": within, "duplicate_of_earlier_source": across, "kept": len(keep),
                       "train": int((~is_val).sum()), "val": int(is_val.sum())},
        })
    return parts


def write_corpus(parts: list[dict], out: str | Path, packages: list[dict]) -> dict:
    out = Path(out)
    files = {}

    def write(key: str, name: str, array: np.ndarray) -> None:
        data = npy_bytes(array)
        atomic_write_bytes(out / name, data)
        files[key] = {"path": name, "shape": list(array.shape), "sha256": hashlib.sha256(data).hexdigest()}

    for split in ("train", "val"):
        for kind, suffix, channels in (("tiles", "", 3), ("rgba", "-rgba", 4)):
            empty = np.zeros((0, TILE, TILE, channels), dtype=np.uint8)
            write(split + suffix.replace("-", "/"), f"{split}{suffix}.npy",
                  np.concatenate([empty] + [p[kind][split] for p in parts]))
    sources = []
    for part in parts:
        ts = part["tileset"]
        write(f"val/{ts.source}", f"val-{ts.source}.npy", part["tiles"]["val"])
        write(f"val/{ts.source}/rgba", f"val-{ts.source}-rgba.npy", part["rgba"]["val"])
        sources.append({
            "name": ts.source, "package": ts.package, "tileset": ts.tileset, "license": ts.license,
            "counts": part["counts"], "val": f"val/{ts.source}", "val_rgba": f"val/{ts.source}/rgba",
            "sheets": [{"name": s.name, "first_sprite_id": s.first_id,
                        "sha256": hashlib.sha256(s.read()).hexdigest()} for s in ts.sheets],
        })
    counts = {k: sum(p["counts"][k] for p in parts) for k in parts[0]["counts"]}
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": out.name,
        "corpus_version": CORPUS_VERSION,
        "source": {"kind": "debian-packages", "packages": packages},
        "tile_size": TILE,
        "pixels": "uint8 RGB multiplied by alpha, (N, 32, 32, 3); the */rgba files: the same tiles as RGBA, "
                  "alpha kept, (N, 32, 32, 4)",
        "split": {"seed": SPLIT_SEED, "val_every": VAL_EVERY, "per": "source"},
        "counts": counts,
        "sources": sources,
        "files": files,
        "tile_fields": ["package", "tileset", "sheet", "x", "y", "sprite_id", "license"],
        "tiles": {split: [row for p in parts for row in p["rows"][split]] for split in ("train", "val")},
    }
    atomic_write_text(out / "manifest.json", manifest_json(manifest))
    return manifest


def build_corpus(out: str | Path, debs: dict[str, Path] | None = None,
                 packages: tuple[Package, ...] = PACKAGES) -> dict:
    """Build the corpus into ``out`` from ``packages``; ``debs`` maps a package to a ``.deb`` to use."""
    debs = debs or {}
    unknown = sorted(set(debs) - {p.name for p in packages})
    if unknown:
        raise DataError(f"--deb for {unknown[0]!r}, which is not in the corpus; known: {[p.name for p in packages]}")
    with tempfile.TemporaryDirectory(prefix="tessera-corpus-") as scratch_name:
        scratch = Path(scratch_name)
        tilesets, described = [], []
        for package in packages:
            root, version = package_root(package.name, package.marker, scratch, debs.get(package.name))
            found = package.tilesets(root)
            tilesets += found
            described.append({"package": package.name, "version": version, "license": package.license,
                              "tilesets": [t.tileset for t in found]})
        return write_corpus(split_sources(tilesets), out, described)


def deb_map(paths: list[str]) -> dict[str, Path]:
    """``--deb`` files by the package each one holds (read from the file)."""
    from tessera.training.debian import run

    return {run(["dpkg-deb", "-f", p, "Package"]): Path(p) for p in paths}
