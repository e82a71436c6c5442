"""Reading a built tile data set and feeding it to a model as float [0, 1] tensors.

    data = TileData.open("data/dcss")
    train = TileDataset(data.split("train"), augment=False)
    x = train[0]  # (3, 32, 32) float32 in [0, 1]
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from tessera.training.data import FORMAT
from tessera.training.errors import DataError
from tessera.training.tiles import TILE



@dataclass(frozen=True)
class TileData:
    """A data set folder written by ``tessera.training.data.build_dataset``."""

    path: Path
    manifest: dict = field(repr=False)
    manifest_sha256: str  # identifies the data set: the manifest holds the arrays' hashes

    @classmethod
    def open(cls, path: str | Path) -> TileData:
        path = Path(path)
        manifest_path = path / "manifest.json"
        if not path.is_dir():
            raise DataError(f"data set {path} does not exist; build one with `tessera data dcss --out {path}`")
        if not manifest_path.is_file():
            raise DataError(
                f"{path} has no manifest.json; build the data set with `tessera data dcss` or `tessera data folder`"
            )
        raw = manifest_path.read_bytes()
        try:
            manifest = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DataError(f"{manifest_path} is not valid JSON ({exc}); rebuild the data set") from exc
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise DataError(f"{manifest_path} is not a Tessera tile manifest; rebuild the data set")
        return cls(path, manifest, hashlib.sha256(raw).hexdigest())

    @property
    def counts(self) -> dict:
        return self.manifest["counts"]

    @property
    def sources(self) -> list[str]:
        """Names of the validation sources; a single-source data set is one source, its own name."""
        return [s["name"] for s in self.manifest.get("sources", [])] or [self.manifest["name"]]

    def split(self, name: str) -> np.ndarray:
        """The tiles of one split (train, val, or val/<source>), uint8 (N, 32, 32, 3), checked
        against the manifest's hash."""
        known = [k for k in self.manifest["files"]]
        if name not in known:
            raise ValueError(f"unknown split {name!r}; known: {known}")
        entry = self.manifest["files"][name]
        file = self.path / entry["path"]
        try:
            raw = file.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read {file}: {exc.strerror}; rebuild the data set") from exc
        if hashlib.sha256(raw).hexdigest() != entry["sha256"]:
            raise DataError(f"{file} does not match its manifest (sha256 differs); rebuild the data set")
        array = np.load(file, allow_pickle=False)
        if array.dtype != np.uint8 or array.ndim != 4 or array.shape[1:3] != (TILE, TILE) or array.shape[3] not in (3, 4):
            raise DataError(f"{file} holds {array.dtype} {array.shape}, expected uint8 (N, 32, 32, 3 or 4)")
        return array

    @property
    def has_rgba(self) -> bool:
        """Whether the data set also holds its tiles with alpha (``tessera data corpus`` writes them)."""
        return "train/rgba" in self.manifest["files"]

    def sources_of(self, split: str = "val", rgba: bool = False) -> dict[str, np.ndarray]:
        """Each source's tiles of ``split`` (``val`` or ``train``) by source name, with alpha
        (N, 32, 32, 4) when ``rgba``. Each source has validation files of its own; the training
        split holds the sources one after another, in the manifest's order."""
        if split not in ("val", "train"):
            raise ValueError(f"unknown split {split!r}; known: ['train', 'val']")
        if rgba and not self.has_rgba:
            raise DataError(f"{self.path} holds no RGBA tiles; rebuild it with `tessera data corpus`")
        whole = f"{split}/rgba" if rgba else split
        if "sources" not in self.manifest:
            return {self.manifest["name"]: self.split(whole)}
        if split == "val":
            return {s["name"]: self.split(s["val_rgba" if rgba else "val"]) for s in self.manifest["sources"]}
        tiles = self.split(whole)
        parts, start = {}, 0
        for source in self.manifest["sources"]:
            count = source["counts"]["train"]
            parts[source["name"]] = tiles[start : start + count]
            start += count
        if start != len(tiles):
            raise DataError(f"{self.path}: the sources' training counts add up to {start}, the training split "
                            f"holds {len(tiles)} tiles; rebuild the data set")
        return parts

    def describe(self) -> dict:
        """What a checkpoint records about the data it was trained on."""
        return {
            "name": self.manifest["name"],
            "path": str(self.path),
            "manifest_sha256": self.manifest_sha256,
            "source": {k: v for k, v in self.manifest["source"].items() if k != "sheets"},
            "counts": self.counts,
            "sources": self.sources,
        }


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a cheap, well-spread hash of uint64 values."""
    with np.errstate(over="ignore"):
        z = values + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square: k % 4 quarter turns, then a horizontal flip if k >= 4."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if k >= 4 else x


class TileDataset(Dataset):
    """uint8 (N, 32, 32, 3) tiles served as float32 (3, 32, 32) in [0, 1].

    With ``augment`` each tile gets one of the 8 flips/quarter turns, chosen by a hash of
    (seed, epoch, index): the same for a given epoch whatever the process or a resume, and
    different between epochs (call ``set_epoch``).
    """

    def __init__(self, tiles: np.ndarray, augment: bool = False, seed: int = 0):
        self.tiles = torch.from_numpy(np.ascontiguousarray(tiles)).permute(0, 3, 1, 2).contiguous()  # (N, 3, 32, 32)
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: list[int]) -> torch.Tensor:
        """A whole batch at once, (B, 3, 32, 32) float32; the DataLoader calls this when present."""
        index = torch.as_tensor(indices, dtype=torch.long)
        x = self.tiles[index].float().div_(255.0)
        if not self.augment:
            return x
        epoch_key = _mix(np.uint64(self.seed) * np.uint64(1 << 32) + np.uint64(self.epoch))
        keys = np.asarray(indices, dtype=np.uint64) ^ epoch_key
        choice = torch.from_numpy((_mix(keys) % np.uint64(8)).astype(np.int64))
        for k in range(1, 8):
            rows = (choice == k).nonzero().flatten()
            if len(rows):
                x[rows] = dihedral(x[rows], k)
        return x


def keep_batch(batch: torch.Tensor) -> torch.Tensor:
    """DataLoader ``collate_fn`` for ``TileDataset``: its batches are already stacked."""
    return batch
