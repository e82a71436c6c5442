"""Cutting sheets into tiles and putting them back together, client side."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tessera.client.errors import InputError
from tessera.client.tiles import (
    assemble_sheet,
    cut_sheet,
    default_columns,
    image_pixels,
    image_to_rgb,
    load_image,
    tiles_from_array,
    to_channels,
)


def _sheet(rows: int, cols: int) -> np.ndarray:
    rng = np.random.default_rng(rows * 100 + cols)
    return rng.integers(0, 256, size=(rows * 32, cols * 32, 3), dtype=np.uint8)


def test_cut_is_row_major_and_assemble_inverts_it():
    sheet = _sheet(2, 3)
    tiles, grid = cut_sheet(sheet)
    assert grid == (2, 3) and tiles.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(tiles[1], sheet[0:32, 32:64])  # second tile: first row, second column
    np.testing.assert_array_equal(tiles[3], sheet[32:64, 0:32])
    np.testing.assert_array_equal(assemble_sheet(tiles, columns=3), sheet)


def test_sides_not_multiple_of_32_are_refused_or_cropped():
    sheet = _sheet(2, 2)[:50]
    with pytest.raises(InputError, match=r"64x50 pixels; both sides must be multiples of 32"):
        cut_sheet(sheet, name="odd.png")
    tiles, grid = cut_sheet(sheet, crop=True)
    assert grid == (1, 2) and len(tiles) == 2


def test_alpha_is_multiplied_in():
    rgba = np.zeros((32, 32, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = 128
    rgba[0, 0, 3] = 0
    rgb = image_to_rgb(Image.fromarray(rgba, "RGBA"))
    assert rgb.shape == (32, 32, 3) and rgb[0, 0].tolist() == [0, 0, 0] and rgb[1, 1].tolist() == [100, 100, 100]
    np.testing.assert_array_equal(to_channels(tiles_from_array(rgba[None]), 3), rgb[None])


def test_what_is_sent_keeps_alpha_only_where_there_is_transparency():
    rgba = np.full((32, 32, 4), 200, dtype=np.uint8)
    rgba[..., 3] = 255
    assert image_pixels(Image.fromarray(rgba, "RGBA")).shape == (32, 32, 3)  # opaque: RGB, the same tile
    rgba[0, 0, 3] = 0
    sent = image_pixels(Image.fromarray(rgba, "RGBA"))
    assert sent.shape == (32, 32, 4) and sent[0, 0, 3] == 0 and sent[0, 0, 0] == 200  # colour kept under alpha 0
    np.testing.assert_array_equal(tiles_from_array(rgba[None]), rgba[None])  # arrays are sent as they are
    opaque = to_channels(sent[None, ..., :3], 4)
    assert opaque.shape == (1, 32, 32, 4) and (opaque[..., 3] == 255).all()


def test_unused_cells_of_a_sheet_are_black():
    tiles = np.full((5, 32, 32, 3), 255, dtype=np.uint8)
    sheet = assemble_sheet(tiles, columns=3)
    assert sheet.shape == (64, 96, 3) and sheet[32:, 64:].max() == 0 and sheet[:32].min() == 255


def test_default_columns_follow_the_server_rule():
    assert [default_columns(n) for n in (1, 16, 17, 100)] == [1, 16, 5, 10]


@pytest.mark.parametrize(
    ("array", "message"),
    [(np.zeros((2, 32, 32, 3), np.float32), "must be uint8"), (np.zeros((2, 16, 16, 3), np.uint8), r"\[N, 32, 32, 3 or 4\]"),
     (np.zeros((0, 32, 32, 3), np.uint8), "empty")],
)
def test_bad_arrays_are_refused_clearly(array, message):
    with pytest.raises(InputError, match=message):
        tiles_from_array(array)


def test_files_that_are_not_images_are_refused_clearly(tmp_path):
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InputError, match="notes.png: not an image"):
        load_image(text)
    with pytest.raises(InputError, match="no such file"):
        load_image(tmp_path / "missing.png")
