"""The multi-artist corpus: Cataclysm tilesets cut by their tile_config.json, sources split and
deduplicated, and the DCSS source identical to `tessera data dcss`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.corpus import (CDDA_GFX, SourceSheet, Tileset, cdda_tileset_sheets, cdda_tilesets, split_sources,
                             write_corpus)
from training.data import build_dataset, folder_sheets
from training.dataset import TileData
from training.errors import DataError
from training.tiles import premultiply


def random_sheet(path: Path, cols: int, rows: int, cell_w: int, cell_h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, size=(rows * cell_h, cols * cell_w, 4), dtype=np.uint8)
    image[..., 3] = 255
    image[:cell_h, :cell_w] = 0  # the first sprite is empty: constant after premultiplying
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image, "RGBA").save(path)
    return image


def write_tileset(root: Path, name: str, seed: int, copy_from: np.ndarray | None = None) -> dict:
    """A Cataclysm tileset: a 32x32 default sheet, a 20x20 sheet, a 32x64 'tall' sheet, a 32x32
    sheet declared by sprite_width/height in a 16-pixel tileset would also count."""
    folder = root / CDDA_GFX / name
    main = random_sheet(folder / "tiles.png", 4, 3, 32, 32, seed)
    if copy_from is not None:  # one sprite drawn by an earlier source
        main[32:64, 32:64] = copy_from
        Image.fromarray(main, "RGBA").save(folder / "tiles.png")
    random_sheet(folder / "small.png", 5, 2, 20, 20, seed + 1)
    random_sheet(folder / "tall.png", 2, 1, 32, 64, seed + 2)
    random_sheet(folder / "items.png", 2, 2, 32, 32, seed + 3)
    config = {
        "tile_info": [{"pixelscale": 1, "width": 32, "height": 32}],
        "tiles-new": [
            {"file": "small.png", "sprite_width": 20, "sprite_height": 20, "tiles": []},  # ids 0-9
            {"file": "tiles.png", "tiles": []},  # ids 10-21
            {"file": "tall.png", "sprite_width": 32, "sprite_height": 64, "tiles": []},  # ids 22-23
            {"file": "items.png", "sprite_width": 32, "sprite_height": 32, "sprite_offset_y": -8, "tiles": []},
            {"file": "fallback.png", "ascii": [{"offset": 0, "color": "WHITE"}]},
        ],
    }
    random_sheet(folder / "fallback.png", 16, 2, 32, 32, seed + 4)  # a font: never cut
    (folder / "tile_config.json").write_text(json.dumps(config))
    return {"main": main}


def test_only_32x32_sheets_are_cut_with_the_games_sprite_ids(tmp_path):
    write_tileset(tmp_path, "Artist", seed=1)
    sheets = cdda_tileset_sheets(tmp_path / CDDA_GFX / "Artist" / "tile_config.json")
    assert [(s.name, s.first_id) for s in sheets] == [("tiles.png", 10), ("items.png", 24)]


def test_a_sheet_the_json_names_must_exist(tmp_path):
    write_tileset(tmp_path, "Artist", seed=1)
    (tmp_path / CDDA_GFX / "Artist" / "items.png").unlink()
    with pytest.raises(DataError, match="items.png, which is not in the package"):
        cdda_tilesets(tmp_path, ("Artist",))


def test_sources_are_split_apart_and_deduplicated_across_sources(tmp_path):
    first = write_tileset(tmp_path, "First", seed=1)
    write_tileset(tmp_path, "Second", seed=10, copy_from=first["main"][32:64, 64:96])
    tilesets = cdda_tilesets(tmp_path, ("First", "Second"))
    assert [t.source for t in tilesets] == ["cdda-first", "cdda-second"]
    manifest = write_corpus(split_sources(tilesets), tmp_path / "corpus", [{"package": "test"}])
    counts = {s["name"]: s["counts"] for s in manifest["sources"]}
    # 12 + 4 sprites per tileset, one empty per sheet; the second tileset re-uses one of the first's
    assert counts["cdda-first"]["kept"] == 14 and counts["cdda-first"]["constant"] == 2
    assert counts["cdda-second"]["duplicate_of_earlier_source"] == 1 and counts["cdda-second"]["kept"] == 13
    data = TileData.open(tmp_path / "corpus")
    assert data.sources == ["cdda-first", "cdda-second"]
    val = data.val_sources()
    assert {k: len(v) for k, v in val.items()} == {"cdda-first": 1, "cdda-second": 1}
    assert np.array_equal(np.concatenate(list(val.values())), data.split("val"))
    # the same tiles with their alpha, for RGBA models: multiplying it in gives the RGB tiles
    assert data.has_rgba
    for split in ("train", "val"):
        rgba = data.split(f"{split}/rgba")
        assert rgba.shape[-1] == 4 and np.array_equal(premultiply(rgba), data.split(split))
    assert {k: len(v) for k, v in data.val_sources_rgba().items()} == {"cdda-first": 1, "cdda-second": 1}
    assert len(data.split("train")) == 14 + 13 - 2
    # every manifest row points at its pixels, and records package, tileset, sprite id and licence
    package, tileset, sheet, x, y, sprite, licence = manifest["tiles"]["val"][0]
    rgba = np.asarray(Image.open(tmp_path / CDDA_GFX / tileset / sheet).convert("RGBA"))
    assert np.array_equal(premultiply(rgba)[y : y + 32, x : x + 32], data.split("val")[0])
    first_id = {"tiles.png": 10, "items.png": 24}[sheet]
    columns = rgba.shape[1] // 32
    assert sprite == first_id + (y // 32) * columns + x // 32
    assert (package, licence) == ("cataclysm-dda-data", "CC-BY-SA-3.0")


def test_the_first_source_splits_exactly_as_a_data_set_of_its_own(sheet_folder, tmp_path):
    own = build_dataset(folder_sheets(sheet_folder), tmp_path / "own", tile_size=32, source={}, name="own")
    sheets = tuple(SourceSheet(s.name, s.path, -1) for s in folder_sheets(sheet_folder))
    write_tileset(tmp_path, "Other", seed=3)
    tilesets = [Tileset("dcss", "crawl-tiles-data", "dcss", "CC0-1.0", sheets), *cdda_tilesets(tmp_path, ("Other",))]
    write_corpus(split_sources(tilesets), tmp_path / "corpus", [])
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(tmp_path / "corpus" / "val-dcss.npy") == digest(tmp_path / "own" / "val.npy")
    assert own["counts"]["train"] == TileData.open(tmp_path / "corpus").manifest["sources"][0]["counts"]["train"]
    # and a rebuild is byte-identical
    before = {p.name: digest(p) for p in (tmp_path / "corpus").iterdir()}
    write_corpus(split_sources(tilesets), tmp_path / "corpus", [])
    assert {p.name: digest(p) for p in (tmp_path / "corpus").iterdir()} == before
