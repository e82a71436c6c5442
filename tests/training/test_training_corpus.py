"""The multi-artist corpus: Cataclysm tilesets cut by their tile_config.json, sources split and
deduplicated, and the DCSS source identical to `tessera data dcss`."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tessera.training.corpus import (ANGBAND_GRAF, CDDA_GFX, CROSSFIRE_DIR, PACKAGES, SUPERTUX_IMAGES, SourceSheet, Tileset,
                             angband_tilesets, cdda_tileset_sheets, cdda_tilesets, crossfire_tilesets, cut_tileset,
                             packages_named, split_sources, supertux_tilesets, write_corpus)
from tessera.training.data import build_dataset, folder_sheets
from tessera.training.dataset import TileData
from tessera.training.errors import DataError
from tessera.training.tiles import premultiply


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
    val = data.sources_of("val")
    assert {k: len(v) for k, v in val.items()} == {"cdda-first": 1, "cdda-second": 1}
    assert np.array_equal(np.concatenate(list(val.values())), data.split("val"))
    # the same tiles with their alpha, for RGBA models: multiplying it in gives the RGB tiles
    assert data.has_rgba
    for split in ("train", "val"):
        rgba = data.split(f"{split}/rgba")
        assert rgba.shape[-1] == 4 and np.array_equal(premultiply(rgba), data.split(split))
    assert {k: len(v) for k, v in data.sources_of("val", rgba=True).items()} == {"cdda-first": 1, "cdda-second": 1}
    assert len(data.split("train")) == 14 + 13 - 2
    # every manifest row points at its pixels, and records package, tileset, sprite id and licence
    package, tileset, sheet, x, y, sprite, licence = manifest["tiles"]["val"][0]
    rgba = np.asarray(Image.open(tmp_path / CDDA_GFX / tileset / sheet).convert("RGBA"))
    assert np.array_equal(premultiply(rgba)[y : y + 32, x : x + 32], data.split("val")[0])
    first_id = {"tiles.png": 10, "items.png": 24}[sheet]
    columns = rgba.shape[1] // 32
    assert sprite == first_id + (y // 32) * columns + x // 32
    assert (package, licence) == ("cataclysm-dda-data", "CC-BY-SA-3.0")


def test_each_sources_training_tiles_are_the_ones_its_manifest_rows_name(tmp_path):
    write_tileset(tmp_path, "First", seed=1)
    write_tileset(tmp_path, "Second", seed=10)
    manifest = write_corpus(split_sources(cdda_tilesets(tmp_path, ("First", "Second"))), tmp_path / "corpus", [])
    data = TileData.open(tmp_path / "corpus")
    train = data.sources_of("train")
    assert {k: len(v) for k, v in train.items()} == {s["name"]: s["counts"]["train"] for s in manifest["sources"]}
    assert np.array_equal(np.concatenate(list(train.values())), data.split("train"))
    tiles = iter(manifest["tiles"]["train"])
    for source, rows in train.items():
        for tile in rows:  # each tile is cut from a sheet of its own source's tileset
            _, tileset, sheet, x, y, *_ = next(tiles)
            assert source == f"cdda-{tileset.lower()}"
            rgba = np.asarray(Image.open(tmp_path / CDDA_GFX / tileset / sheet).convert("RGBA"))
            assert np.array_equal(premultiply(rgba)[y : y + 32, x : x + 32], tile)
    with_alpha = data.sources_of("train", rgba=True)
    assert all(np.array_equal(premultiply(with_alpha[s]), train[s]) for s in train)
    assert {k: len(v) for k, v in data.sources_of("val").items()} == {"cdda-first": 1, "cdda-second": 1}
    with pytest.raises(ValueError, match="unknown split 'test'"):
        data.sources_of("test")


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


def png_bytes(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, format="PNG")
    return out.getvalue()


def random_rgba(width: int, height: int, seed: int) -> np.ndarray:
    image = np.random.default_rng(seed).integers(0, 256, size=(height, width, 4), dtype=np.uint8)
    image[..., 3] = 255
    return image


def write_crossfire(root: Path, faces: list[tuple[str, np.ndarray]]) -> Path:
    path = root / CROSSFIRE_DIR / "crossfire.base"
    path.parent.mkdir(parents=True)
    records = []
    for name, pixels in faces:
        data = png_bytes(pixels)
        records.append(f"IMAGE {len(data)} ./{name}\n".encode() + data)
    path.write_bytes(b"".join(records))
    return path


def test_crossfire_faces_are_read_from_the_packed_image_file_and_cut_on_the_32_grid(tmp_path):
    one, two, small = random_rgba(32, 32, 1), random_rgba(64, 32, 2), random_rgba(16, 16, 3)
    write_crossfire(tmp_path, [("arch/a/one.111", one), ("arch/b/two.x11", two), ("arch/c/small.111", small)])
    [tileset] = crossfire_tilesets(tmp_path)
    assert (tileset.source, tileset.package, tileset.license) == ("crossfire", "crossfire-client-images", "GPL")
    assert [s.name for s in tileset.sheets] == ["arch/a/one.111", "arch/b/two.x11"]  # under 32 pixels: left out
    tiles, rows = cut_tileset(tileset)
    assert np.array_equal(tiles, np.stack([one, two[:, :32], two[:, 32:]]))
    assert [row[2:6] for row in rows] == [["arch/a/one.111", 0, 0, -1], ["arch/b/two.x11", 0, 0, -1],
                                          ["arch/b/two.x11", 32, 0, -1]]
    # each face's sha256 in the manifest is that of its own PNG
    manifest = write_corpus(split_sources([tileset]), tmp_path / "corpus", [])
    assert manifest["sources"][0]["sheets"][0]["sha256"] == hashlib.sha256(png_bytes(one)).hexdigest()


@pytest.mark.parametrize("cut", [lambda b: b[:-10], lambda b: b"PNG " + b, lambda b: b + b"IMAGE x y\n"])
def test_a_damaged_crossfire_image_file_is_a_data_error(tmp_path, cut):
    path = write_crossfire(tmp_path, [("arch/a/one.111", random_rgba(32, 32, 1))])
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(DataError, match="crossfire.base"):
        crossfire_tilesets(tmp_path)


STRF = """;; -*- scheme -*-
(supertux-tiles
  (tilegroup (name (_ "Snow")) (tiles 5 7 8))
  (tile (id 3) (images "single.png") (solid #t))
  (tiles
    (width 2)
    (height 2)
    (ids 5 0
         7 8)
    (attributes 1 0 1 1)
    (image "tiles/block.png")
  )
  (tiles (width 1) (height 1) (ids 9) (images "tiles/a.png" "tiles/b.png") (fps 10))
  (tiles (width 1) (height 1) (ids 10) (image "tiles/hires.png"))
)
"""


def write_supertux(root: Path, strf: str = STRF) -> tuple[Path, np.ndarray]:
    folder = root / SUPERTUX_IMAGES
    (folder / "tiles").mkdir(parents=True)
    block = random_rgba(64, 64, 40)
    Image.fromarray(block, "RGBA").save(folder / "tiles" / "block.png")
    for name, size in (("single.png", 32), ("tiles/a.png", 32), ("tiles/b.png", 32), ("tiles/hires.png", 64)):
        Image.fromarray(random_rgba(size, size, size), "RGBA").save(folder / name)
    (folder / "tiles.strf").write_text(strf)
    return folder / "tiles.strf", block


def test_supertux_tiles_are_cut_by_the_layout_in_tiles_strf(tmp_path):
    _, block = write_supertux(tmp_path)
    [tileset] = supertux_tilesets(tmp_path)
    assert (tileset.source, tileset.license) == ("supertux", "GPL-3.0-or-later")
    # animations (images) and sheets of 64-pixel cells are left out; id 0 is an empty cell
    assert [(s.name, s.ids) for s in tileset.sheets] == [("tiles/block.png", (5, 0, 7, 8))]
    tiles, rows = cut_tileset(tileset)
    assert np.array_equal(tiles, np.stack([block[:32, :32], block[32:, :32], block[32:, 32:]]))
    assert [row[3:6] for row in rows] == [[0, 0, 5], [0, 32, 7], [32, 32, 8]]


@pytest.mark.parametrize("change, message", [
    (lambda t: t.replace("(ids 5 0", "(ids 5"), "3 ids for 2x2 cells"),
    (lambda t: t.replace('"tiles/block.png"', '"tiles/gone.png"'), "gone.png, which is not in the package"),
    (lambda t: t[:-3], "cannot read tile description"),
    (lambda t: t.replace('(image "tiles/block.png"', '(image "tiles/block.png'), "not an S-expression"),
    (lambda t: t.replace("(width 2)", ""), "4 ids for Nonex2 cells"),
])
def test_a_broken_supertux_layout_is_a_data_error(tmp_path, change, message):
    write_supertux(tmp_path, change(STRF))
    with pytest.raises(DataError, match=message):
        supertux_tilesets(tmp_path)


GRAPHICS_TXT = """# File: graphics.txt
N:1:Original Tiles
I:8:8:8x8.png
M:Original Tiles
N:3:David Gervais' tiles
I:32:32:32x32.png
M:David Gervais' tiles
X:0:0:0
"""


def test_angband_takes_the_one_32x32_set_that_graphics_txt_lists(tmp_path):
    folder = tmp_path / ANGBAND_GRAF
    folder.mkdir(parents=True)
    sheet = random_rgba(96, 64, 5)
    Image.fromarray(sheet, "RGBA").save(folder / "32x32.png")
    (folder / "graphics.txt").write_text(GRAPHICS_TXT)
    [tileset] = angband_tilesets(tmp_path)
    assert (tileset.source, tileset.tileset, tileset.license) == ("angband", "David Gervais' tiles", "CC-BY-3.0")
    tiles, rows = cut_tileset(tileset)
    assert len(tiles) == 6 and np.array_equal(tiles[4], sheet[32:, 32:64])
    (folder / "graphics.txt").write_text(GRAPHICS_TXT.replace("I:32:32", "I:16:16"))
    with pytest.raises(DataError, match="lists 0 sets of 32x32 tiles"):
        angband_tilesets(tmp_path)


def test_a_source_appended_to_the_corpus_leaves_the_earlier_splits_byte_identical(tmp_path):
    write_tileset(tmp_path, "First", seed=1)
    write_tileset(tmp_path, "Second", seed=10)
    write_supertux(tmp_path)
    earlier = cdda_tilesets(tmp_path, ("First", "Second"))
    write_corpus(split_sources(earlier), tmp_path / "before", [])
    write_corpus(split_sources(earlier + supertux_tilesets(tmp_path)), tmp_path / "after", [])
    for name in ("val-cdda-first.npy", "val-cdda-second.npy", "val-cdda-first-rgba.npy"):
        assert (tmp_path / "before" / name).read_bytes() == (tmp_path / "after" / name).read_bytes()
    assert TileData.open(tmp_path / "after").sources == ["cdda-first", "cdda-second", "supertux"]


def test_the_package_list_is_explicit_and_a_subset_keeps_its_order():
    assert [p.name for p in PACKAGES] == ["crawl-tiles-data", "cataclysm-dda-data", "crossfire-client-images",
                                          "supertux-data", "angband-data"]
    assert [p.name for p in packages_named(["angband-data", "crawl-tiles-data"])] == ["crawl-tiles-data",
                                                                                      "angband-data"]
    assert packages_named(None) == PACKAGES
    with pytest.raises(DataError, match="'nethack' is not a package of the corpus"):
        packages_named(["nethack"])
