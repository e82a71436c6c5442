"""RGBA models keep alpha end to end, RGB models multiply it in, and sheets laid out with
Tiled's margin and spacing are cut and assembled by them."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, load_npy, npy, png, random_tiles, sheet_of
from tessera.testing.checkpoints import save_checkpoint, tiny_rgba

STATS = {"mean": 0.1, "std": 2.0, "scaling_factor": 0.5, "shift_factor": 0.1, "channel_mean": [0.1] * 64,
         "channel_std": [2.0] * 64, "tiles": 100, "data": "corpus"}


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    folder = tmp_path_factory.mktemp("alpha-checkpoints")
    save_checkpoint(folder / "rgb.safetensors", training={"latent_stats": STATS})
    save_checkpoint(folder / "rgba.safetensors", preset=tiny_rgba(), seed=1)
    with serving(folder, default_model="rgb") as client:
        yield client


def sprites(n: int, seed: int = 0) -> np.ndarray:
    """RGBA tiles with fully transparent, half and opaque pixels."""
    tiles = random_tiles(n, seed, channels=4)
    tiles[:, :8, :, 3] = 0
    tiles[:, 8:16, :, 3] = 128
    tiles[:, 16:, :, 3] = 255
    return tiles


def encode(client, body: bytes, content_type: str, **params) -> np.ndarray:
    response = client.post("/v1/encode", params=params, content=body, headers={"Content-Type": content_type, "Accept": NPY})
    assert response.status_code == 200, response.text
    return load_npy(response.content)


def premultiplied(rgba: np.ndarray) -> np.ndarray:
    """Colour times alpha, rounded, written out independently of ``tiles.premultiply``."""
    out = np.empty(rgba.shape[:-1] + (3,), np.uint8)
    for c in range(3):
        out[..., c] = np.floor(rgba[..., c].astype(np.float64) * rgba[..., 3] / 255 + 0.5)
    return out


def test_models_say_which_keep_alpha_and_give_latent_stats(client):
    models = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
    assert models["rgb"]["channels"] == "RGB" and models["rgba"]["channels"] == "RGBA"
    assert models["rgba"]["compression_ratio"] == 64.0  # 32 * 32 * 4 values -> 64
    assert models["rgb"]["latent_stats"]["scaling_factor"] == 0.5
    assert models["rgb"]["latent_stats"]["channel_std"] == [2.0] * 64
    assert models["rgba"]["latent_stats"] is None


def test_an_rgba_round_trip_keeps_transparency(client):
    tiles = sprites(6)
    latents = encode(client, png(sheet_of(tiles, 2, 3), "RGBA"), "image/png", model="rgba")
    assert latents.shape == (6, 64, 1, 1)
    np.testing.assert_array_equal(latents, encode(client, npy(tiles), NPY, model="rgba"))
    sheet = client.post("/v1/decode", params={"model": "rgba", "columns": 3}, content=npy(latents),
                        headers={"Content-Type": NPY})
    assert sheet.status_code == 200 and sheet.headers["X-Tessera-Grid"] == "2,3"
    image = Image.open(io.BytesIO(sheet.content))
    assert image.mode == "RGBA" and image.size == (96, 64)
    decoded = client.post("/v1/decode", params={"model": "rgba"}, content=npy(latents),
                          headers={"Content-Type": NPY, "Accept": NPY})
    assert load_npy(decoded.content).shape == (6, 32, 32, 4)
    tile = client.post("/v1/decode", params={"model": "rgba"}, content=npy(latents[:1]), headers={"Content-Type": NPY}).content
    assert Image.open(io.BytesIO(tile)).mode == "RGBA"


def test_rgb_models_multiply_alpha_in_and_rgba_models_take_rgb_as_opaque(client):
    tiles = sprites(4, seed=2)
    as_png = encode(client, png(sheet_of(tiles, 1, 4), "RGBA"), "image/png", model="rgb")
    np.testing.assert_array_equal(as_png, encode(client, npy(premultiplied(tiles)), NPY, model="rgb"))
    np.testing.assert_array_equal(as_png, encode(client, npy(tiles), NPY, model="rgb"))
    rgb = random_tiles(3, seed=3)
    opaque = np.concatenate([rgb, np.full((3, 32, 32, 1), 255, np.uint8)], axis=-1)
    np.testing.assert_array_equal(encode(client, npy(rgb), NPY, model="rgba"), encode(client, npy(opaque), NPY, model="rgba"))
    decoded = client.post("/v1/decode", params={"model": "rgb"}, content=npy(as_png), headers={"Content-Type": NPY})
    assert Image.open(io.BytesIO(decoded.content)).mode == "RGB"


def atlas(tiles: np.ndarray, cols: int, margin: int, spacing: int, fill: int = 77) -> np.ndarray:
    """Tiles laid out as Tiled does, gaps filled with ``fill``, written with explicit loops."""
    rows = -(-len(tiles) // cols)
    height, width = 2 * margin + rows * 32 + (rows - 1) * spacing, 2 * margin + cols * 32 + (cols - 1) * spacing
    sheet = np.full((height, width, tiles.shape[-1]), fill, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        y, x = margin + r * (32 + spacing), margin + c * (32 + spacing)
        sheet[y : y + 32, x : x + 32] = tile
    return sheet


def test_a_sheet_with_margin_and_spacing_is_cut_by_them(client):
    tiles = random_tiles(6, seed=4)
    body = png(atlas(tiles, 3, margin=2, spacing=1))
    response = client.post("/v1/encode", params={"margin": 2, "spacing": 1}, content=body,
                           headers={"Content-Type": "image/png", "Accept": NPY})
    assert response.status_code == 200, response.text
    assert response.headers["X-Tessera-Grid"] == "2,3"
    np.testing.assert_array_equal(load_npy(response.content), encode(client, npy(tiles), NPY))
    plain = client.post("/v1/encode", content=body, headers={"Content-Type": "image/png"})
    assert plain.status_code == 422 and plain.json()["code"] == "bad_sheet_size" and "margin" in plain.json()["detail"]


def test_decode_lays_a_png_sheet_out_with_margin_and_spacing(client):
    tiles = random_tiles(5, seed=5)
    latents = encode(client, npy(tiles), NPY)
    plain = client.post("/v1/decode", params={"columns": 3}, content=npy(latents), headers={"Content-Type": NPY})
    spaced = client.post("/v1/decode", params={"columns": 3, "margin": 4, "spacing": 2}, content=npy(latents),
                         headers={"Content-Type": NPY})
    assert spaced.status_code == 200, spaced.text
    cells = np.asarray(Image.open(io.BytesIO(plain.content)))
    expected = atlas(np.stack([cells[r * 32 : r * 32 + 32, c * 32 : c * 32 + 32] for r in range(2) for c in range(3)]),
                     3, margin=4, spacing=2, fill=0)
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(spaced.content))), expected)


@pytest.mark.parametrize("params, content_type, code", [
    ({"margin": -1}, "image/png", "invalid_request"),
    ({"spacing": 5000}, "image/png", "invalid_request"),
    ({"margin": "x"}, "image/png", "invalid_request"),
    ({"margin": 2}, NPY, "bad_layout"),
    ({"margin": 40}, "image/png", "bad_sheet_size"),  # no whole tile fits a 64x32 sheet 40 pixels in
])
def test_bad_layouts_are_refused_with_a_reason(client, params, content_type, code):
    body = npy(random_tiles(2)) if content_type == NPY else png(sheet_of(random_tiles(2), 1, 2))
    response = client.post("/v1/encode", params=params, content=body, headers={"Content-Type": content_type})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == code, response.json()


def test_a_png_sheet_larger_than_the_image_limit_is_refused_before_decoding(client):
    latents = encode(client, npy(random_tiles(2, seed=6)), NPY)
    response = client.post("/v1/decode", params={"columns": 4096, "margin": 1024, "spacing": 1024}, content=npy(latents),
                           headers={"Content-Type": NPY})
    assert response.status_code == 413 and "pixels" in response.json()["detail"], response.text
    as_npy = client.post("/v1/decode", params={"columns": 4096, "margin": 1024, "spacing": 1024}, content=npy(latents),
                         headers={"Content-Type": NPY, "Accept": NPY})
    assert as_npy.status_code == 200 and load_npy(as_npy.content).shape == (2, 32, 32, 3)  # no sheet: no limit to meet
