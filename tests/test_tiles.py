"""The shared tile format: cutting, assembling and pixel rules agree in every direction."""

import numpy as np
from PIL import Image

import tiles


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
