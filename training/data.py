"""Building a tile data set: sheets -> unique non-constant 32x32 tiles -> train/validation split.

The result is a folder with ``train.npy`` and ``val.npy`` (uint8, (N, 32, 32, 3), RGB multiplied
by alpha) and ``manifest.json`` (where each tile came from, counts, the source and the hashes of
the arrays). The same sheets always give byte-identical files.

    from tessera.training.data import build_dataset, folder_sheets
    manifest = build_dataset(folder_sheets("art/"), "data/art", tile_size=16, source={...})
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tessera.training.atomic import atomic_write_bytes, atomic_write_text
from tessera.training.errors import DataError
from tessera.training.tiles import IMAGE_SUFFIXES, TILE, constant_mask, sheet_tiles

FORMAT = "tessera-tiles"
FORMAT_VERSION = 1
SPLIT_SEED = 0  # seed of the shuffle that picks validation tiles
VAL_EVERY = 20  # every 20th tile of the shuffle goes to validation, as in the original experiment


@dataclass(frozen=True)
class Sheet:
    name: str  # how the manifest names it: a path relative to the source folder
    path: Path


def folder_sheets(folder: str | Path) -> list[Sheet]:
    """Every image under ``folder`` (recursively), sorted by relative path."""
    folder = Path(folder)
    if not folder.exists():
        raise DataError(f"data folder {folder} does not exist; pass a folder of images or sprite sheets")
    if not folder.is_dir():
        raise DataError(f"{folder} is not a folder; pass a folder of images or sprite sheets")
    paths = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise DataError(f"data folder {folder} has no images (looked for {', '.join(IMAGE_SUFFIXES)})")
    sheets = [Sheet(p.relative_to(folder).as_posix(), p) for p in paths]
    return sorted(sheets, key=lambda s: s.name)


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def manifest_json(manifest: dict) -> str:
    """Indented JSON with one tile per line, so the manifest stays readable and diffable."""
    tiles = manifest["tiles"]
    head = json.dumps({k: v for k, v in manifest.items() if k != "tiles"}, indent=2)
    splits = []
    for split, rows in tiles.items():
        lines = ",\n".join("      " + json.dumps(row) for row in rows)
        splits.append(f'    "{split}": [\n{lines}\n    ]')
    return head[:-2] + ',\n  "tiles": {\n' + ",\n".join(splits) + "\n  }\n}\n"


def build_dataset(
    sheets: list[Sheet],
    out: str | Path,
    *,
    tile_size: int,
    source: dict,
    name: str,
    seed: int = SPLIT_SEED,
    val_every: int = VAL_EVERY,
) -> dict:
    """Cut ``sheets`` into tiles, keep the unique non-constant ones, split them and write ``out``.

    Args:
        sheets: the images, in the order their tiles are numbered.
        out: folder to write ``train.npy``, ``val.npy`` and ``manifest.json`` into.
        tile_size: side of a tile in the sheets; tiles are resized to 32x32 (nearest).
        source: free-form description of where the sheets came from, kept in the manifest.
        name: short name of the data set.
        seed: seed of the shuffle before the split.
        val_every: every ``val_every``-th tile of the shuffle goes to validation.

    Returns:
        The manifest (also written to ``out/manifest.json``).
    """
    if tile_size < 1:
        raise DataError(f"--tile-size must be a positive number of pixels, got {tile_size}")
    if not sheets:
        raise DataError("no sheets to cut; pass a folder with images")
    tiles, where = cut_sheets(sheets, tile_size)
    constant = constant_mask(tiles)
    keep = unique_tiles(tiles, constant)
    if len(keep) < 2:
        raise DataError(
            f"only {len(keep)} unique non-constant {tile_size}x{tile_size} tiles in {len(sheets)} image(s); "
            f"need at least 2 (one for training, one for validation); check --tile-size"
        )
    splits = split_tiles(keep, seed, val_every)
    out = Path(out)
    files = write_splits(out, tiles, splits)
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "source": source,
        "tile_size": tile_size,
        "pixels": "uint8 RGB multiplied by alpha, (N, 32, 32, 3)",
        "split": {"seed": seed, "val_every": val_every},
        "counts": tile_counts(sheets, tiles, constant, keep, splits),
        "files": files,
        "tile_fields": ["sheet", "x", "y"],
        "tiles": {split: [list(where[i]) for i in index] for split, index in splits.items()},
    }
    atomic_write_text(out / "manifest.json", manifest_json(manifest))
    return manifest


def cut_sheets(sheets: list[Sheet], tile_size: int) -> tuple[np.ndarray, list[tuple[str, int, int]]]:
    """Every tile of ``sheets`` in order, and the (sheet, x, y) it came from."""
    blocks, where = [], []  # tiles per sheet, (sheet, x, y) per tile
    for sheet in sheets:
        tiles, coords = sheet_tiles(sheet.path, tile_size)
        blocks.append(tiles)
        where.extend((sheet.name, x, y) for x, y in coords)
    return np.concatenate(blocks), where


def unique_tiles(tiles: np.ndarray, constant: np.ndarray) -> list[int]:
    """Index of the first copy of each distinct non-constant tile, in order."""
    seen: set[bytes] = set()
    keep = []
    for i in np.flatnonzero(~constant):
        key = tiles[i].tobytes()
        if key not in seen:
            seen.add(key)
            keep.append(i)
    return keep


def split_tiles(keep: list[int], seed: int, val_every: int) -> dict[str, np.ndarray]:
    """``keep`` shuffled with ``seed``; every ``val_every``-th of the shuffle goes to validation."""
    order = np.random.default_rng(seed).permutation(len(keep))
    picked = np.asarray(keep)[order]
    is_val = np.arange(len(picked)) % val_every == 0
    return {"train": picked[~is_val], "val": picked[is_val]}


def write_splits(out: Path, tiles: np.ndarray, splits: dict[str, np.ndarray]) -> dict:
    """``<split>.npy`` in ``out`` for each split; the manifest's ``files``."""
    files = {}
    for split, index in splits.items():
        data = npy_bytes(np.ascontiguousarray(tiles[index]))
        atomic_write_bytes(out / f"{split}.npy", data)
        files[split] = {
            "path": f"{split}.npy",
            "shape": [len(index), TILE, TILE, 3],
            "sha256": hashlib.sha256(data).hexdigest(),
        }
    return files


def tile_counts(
    sheets: list[Sheet],
    tiles: np.ndarray,
    constant: np.ndarray,
    keep: list[int],
    splits: dict[str, np.ndarray],
) -> dict:
    """The manifest's ``counts``: sheets, tiles cut, dropped as constant or duplicate, kept and split."""
    return {
        "sheets": len(sheets),
        "cut": len(tiles),
        "constant": int(constant.sum()),
        "duplicate": int((~constant).sum()) - len(keep),
        "kept": len(keep),
        "train": int(len(splits["train"])),
        "val": int(len(splits["val"])),
    }


def sheet_hashes(sheets: list[Sheet]) -> list[dict]:
    return [{"name": s.name, "sha256": hashlib.sha256(s.path.read_bytes()).hexdigest()} for s in sheets]


def build_folder(folder: str | Path, out: str | Path, tile_size: int = TILE) -> dict:
    """Build a data set from every image under ``folder``, cut on a ``tile_size`` grid."""
    sheets = folder_sheets(folder)
    source = {"kind": "folder", "folder": Path(folder).resolve().name, "sheets": sheet_hashes(sheets)}
    return build_dataset(sheets, out, tile_size=tile_size, source=source, name=Path(out).name)
