"""The shared tile format: cutting, assembling and pixel rules agree in every direction."""

import numpy as np
import pytest
from PIL import Image

from tessera import tiles


def test_cut_is_row_major_and_assemble_inverts_it():
    rng = np.random.default_rng(0)
    sheet = rng.integers(0, 256, (2 * 32, 3 * 32, 3), dtype=np.uint8)
    cut, grid = tiles.cut(sheet)
    assert grid == (2, 3) and cut.shape == (6, 32, 32, 3) and cut.flags.c_contiguous
    np.testing.assert_array_equal(cut[4], sheet[32:64, 32:64])  # row 1, column 1
    np.testing.assert_array_equal(tiles.assemble(cut, 3), sheet)


def test_cut_drops_partial_edges_and_takes_other_sizes():
    sheet = np.zeros((40, 50, 3), np.uint8)
    cut, grid = tiles.cut(sheet, 16)
    assert grid == (2, 3) and cut.shape == (6, 16, 16, 3)


def test_assemble_pads_with_black_and_default_columns():
    one = np.full((5, 32, 32, 3), 255, np.uint8)
    sheet = tiles.assemble(one, 2)
    assert sheet.shape == (3 * 32, 2 * 32, 3) and sheet[64:, 32:].max() == 0 and sheet[64:, :32].min() == 255
    assert [tiles.default_columns(n) for n in (1, 16, 17, 100)] == [1, 16, 5, 10]


def test_pixel_rules_alpha_and_sixteen_bit():
    rgba = np.array([[[200, 100, 50, 0], [200, 100, 50, 255], [200, 100, 50, 128]]], np.uint8)
    assert tiles.to_rgb(Image.fromarray(rgba, "RGBA")).tolist() == [[[0, 0, 0], [200, 100, 50], [100, 50, 25]]]
    grey16 = Image.fromarray(np.array([[0, 65535, 32896]], np.uint16))
    assert tiles.to_rgb(grey16)[0, :, 0].tolist() == [0, 255, 128]


@pytest.mark.parametrize("margin, spacing", [(0, 0), (1, 0), (0, 2), (3, 1)])
def test_atlases_with_margin_and_spacing_cut_back_to_their_tiles(margin, spacing):
    parts = np.random.default_rng(margin * 10 + spacing).integers(0, 256, size=(5, 32, 32, 4), dtype=np.uint8)
    sheet = tiles.assemble(parts, 2, margin, spacing)
    step = 32 + spacing
    assert sheet.shape == (2 * margin + 3 * step - spacing, 2 * margin + 2 * step - spacing, 4)
    assert sheet[margin + 32 : margin + step, :].sum() == 0  # the spacing row between tile rows is empty
    cut, grid = tiles.cut(sheet, 32, margin, spacing)
    assert grid == (3, 2) and np.array_equal(cut[:5], parts)


def test_tiled_counts_columns_that_fit_without_a_right_margin():
    # Tiled: columns = (width - margin + spacing) // (tile + spacing)
    assert tiles.grid_of(33, 32 * 4 + 3 * 2 + 1, 32, margin=1, spacing=2) == (1, 4)
    assert tiles.grid_of(31, 31) == (0, 0)
    with pytest.raises(ValueError, match="negative"):
        tiles.grid_of(64, 64, 32, margin=-1)


def test_tsx_files_are_read_and_written(tmp_path):
    from tessera.tiles.tsx import TsxError, read_tsx, write_tsx

    path = write_tsx(tmp_path / "out.tsx", image="out.png", columns=3, count=7, size=(102, 102), margin=2, spacing=1)
    tileset = read_tsx(path)
    assert (tileset.tile_width, tileset.margin, tileset.spacing, tileset.columns, tileset.count) == (32, 2, 1, 3, 7)
    assert tileset.image == (tmp_path / "out.png").resolve() and tileset.trans is None
    (tmp_path / "key.tsx").write_text('<tileset tilewidth="32" tileheight="32"><image source="a.png" trans="#FF00fF"/></tileset>')
    assert read_tsx(tmp_path / "key.tsx").trans == (255, 0, 255)
    for text, problem in [("<map/>", "not <tileset>"), ("<tileset tilewidth='x'><image source='a.png'/></tileset>", "integer"),
                          ("<tileset><image source='a.png' trans='red'/></tileset>", "RRGGBB"), ("<tileset>", "XML"),
                          ("<tileset tilewidth='32'/>", "no <image")]:
        (tmp_path / "bad.tsx").write_text(text)
        with pytest.raises(TsxError, match=problem):
            read_tsx(tmp_path / "bad.tsx")


def test_training_reads_sixteen_bit_grey_as_serving_does(tmp_path):
    from tessera.service.pipeline.codecs import Limits, decode_image
    from tessera.training.tiles import sheet_tiles

    grey = np.random.default_rng(1).integers(0, 65536, size=(32, 64), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "grey16.png")
    assert Image.open(tmp_path / "grey16.png").mode.startswith("I")
    served, _ = decode_image((tmp_path / "grey16.png").read_bytes(), Limits(max_tiles=16, max_pixels=1 << 20))
    trained, _ = sheet_tiles(tmp_path / "grey16.png", 32)
    np.testing.assert_array_equal(trained, served)
    assert 100 < served.mean() < 155  # scaled from 16 bits, not clipped to 255 nearly everywhere
    rgba = tiles.to_rgba(Image.open(tmp_path / "grey16.png"))
    assert rgba.shape == (32, 64, 4) and (rgba[..., 3] == 255).all() and np.array_equal(rgba[..., 0], served_sheet(served))


def served_sheet(tiles_: np.ndarray) -> np.ndarray:
    return tiles.assemble(tiles_, 2)[..., 0]
