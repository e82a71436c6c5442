"""Building data sets from sheets, and feeding them to a model."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training_helpers import write_sheets

from tessera.training.data import build_folder
from tessera.training.dataset import TileData, TileDataset, dihedral
from tessera.training.errors import DataError
from tessera.training.tiles import cut_grid, premultiply, resize_nearest


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_same_sheets_give_identical_files(sheet_folder, tmp_path):
    build_folder(sheet_folder, tmp_path / "a" / "art")
    build_folder(sheet_folder, tmp_path / "b" / "art")
    assert digests(tmp_path / "a" / "art") == digests(tmp_path / "b" / "art")
    assert set(digests(tmp_path / "a" / "art")) == {"manifest.json", "train.npy", "val.npy"}


def test_manifest_counts_and_tile_positions(tiny_data, sheet_folder):
    data = TileData.open(tiny_data)
    counts = data.counts
    assert counts["sheets"] == 3 and counts["cut"] == 3 * 64
    # per sheet: a transparent and a constant-colour tile (the transparent ones are duplicates
    # of each other too, but constant tiles are dropped first) and one duplicate
    assert counts["constant"] == 6
    assert counts["duplicate"] == 3
    assert counts["kept"] == counts["train"] + counts["val"] == 3 * 64 - 9
    assert counts["val"] == -(-counts["kept"] // 20)  # every 20th tile of the shuffle
    train, val = data.split("train"), data.split("val")
    assert train.dtype == np.uint8 and train.shape == (counts["train"], 32, 32, 3) and val.shape[0] == counts["val"]
    # each manifest entry points at the pixels it came from
    sheet, x, y = data.manifest["tiles"]["val"][0]
    rgba = np.asarray(Image.open(sheet_folder / sheet).convert("RGBA"))
    assert np.array_equal(premultiply(rgba)[y : y + 32, x : x + 32], val[0])
    assert data.manifest["source"]["kind"] == "folder"
    assert len(data.manifest_sha256) == 64


def test_no_tile_is_in_both_splits(tiny_data):
    data = TileData.open(tiny_data)
    train = {t.tobytes() for t in data.split("train")}
    assert not any(t.tobytes() in train for t in data.split("val"))


def test_premultiply_makes_transparent_black():
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], dtype=np.uint8)
    assert premultiply(rgba).tolist() == [[[0, 0, 0], [200, 100, 50], [100, 50, 25]]]


def test_other_tile_sizes_are_resized_with_nearest_neighbour(tmp_path):
    folder = write_sheets(tmp_path / "art16", tile=16, sheets=2)
    manifest = build_folder(folder, tmp_path / "out", tile_size=16)
    assert manifest["files"]["train"]["shape"][1:] == [32, 32, 3]
    tiles = np.arange(2 * 16 * 16 * 3, dtype=np.uint8).reshape(2, 16, 16, 3)
    pil = np.asarray(Image.fromarray(tiles[1]).resize((32, 32), Image.NEAREST))
    assert np.array_equal(resize_nearest(tiles)[1], pil)


def test_cut_grid_ignores_partial_edges():
    sheet = np.zeros((70, 100, 3), dtype=np.uint8)
    tiles, coords = cut_grid(sheet, 32)
    assert tiles.shape == (6, 32, 32, 3)
    assert coords == [(0, 0), (32, 0), (64, 0), (0, 32), (32, 32), (64, 32)]


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "has no images"),
    (lambda p: Image.new("RGBA", (20, 40)).save(p / "small.png") or p, "smaller than one 32x32 tile"),
    (lambda p: [(p / "broken.png").write_bytes(b"not a png"), p][1], "cannot read image"),
])
def test_bad_folders_give_one_clear_error(tmp_path, make, message):
    folder = make(tmp_path)
    with pytest.raises(DataError, match=message) as info:
        build_folder(folder, tmp_path / "out")
    assert "\n" not in str(info.value)


def test_a_corrupted_array_is_detected(tiny_data, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("manifest.json", "train.npy", "val.npy"):
        (copy / name).write_bytes((tiny_data / name).read_bytes())
    raw = bytearray((copy / "val.npy").read_bytes())
    raw[-1] ^= 0xFF
    (copy / "val.npy").write_bytes(bytes(raw))
    with pytest.raises(DataError, match="does not match its manifest"):
        TileData.open(copy).split("val")


def test_dataset_feeds_floats_in_unit_range_without_augmentation_by_default(tiny_data):
    tiles = TileData.open(tiny_data).split("train")
    dataset = TileDataset(tiles)
    x = dataset[3]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert torch.equal(x, torch.from_numpy(tiles[3]).permute(2, 0, 1).float() / 255)
    assert torch.equal(dataset.__getitems__([3, 4])[0], x)


def test_augmentation_is_a_symmetry_chosen_per_epoch(tiny_data):
    tiles = TileData.open(tiny_data).split("train")
    plain, augmented = TileDataset(tiles), TileDataset(tiles, augment=True)
    index = list(range(64))
    first = augmented.__getitems__(index)
    assert torch.equal(first, augmented.__getitems__(index))  # deterministic
    originals = plain.__getitems__(index)
    for x, y in zip(originals, first):
        assert any(torch.equal(dihedral(x, k), y) for k in range(8))
    assert not torch.equal(first, originals)
    augmented.set_epoch(1)
    assert not torch.equal(first, augmented.__getitems__(index))


def test_dcss_builder_when_the_package_is_reachable(tmp_path):
    """Builds the real data set twice; skipped where neither the package nor apt-get can supply it."""
    from tessera.training.dcss import build_dcss

    try:
        manifest = build_dcss(tmp_path / "a" / "dcss")
    except DataError as exc:
        pytest.skip(f"crawl-tiles-data not reachable: {exc}")
    counts = manifest["counts"]
    assert counts["sheets"] == 7 and 6000 < counts["kept"] < 7000
    assert counts["val"] == -(-counts["kept"] // 20)
    assert manifest["source"]["package"] == "crawl-tiles-data" and manifest["source"]["version"]
    build_dcss(tmp_path / "b" / "dcss")
    assert digests(tmp_path / "a" / "dcss") == digests(tmp_path / "b" / "dcss")
    assert json.loads((tmp_path / "a" / "dcss" / "manifest.json").read_text())["tiles"]["train"][0][0].endswith(".png")
