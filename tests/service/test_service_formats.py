"""Every request and response format of /v1/encode and /v1/decode, through the real app."""

from __future__ import annotations

import base64
import io
import math

import numpy as np
import pytest
from PIL import Image

from tessera.testing.bodies import NPY, b64, load_npy, npy, png, random_tiles, sheet_of


def encode_npy(client, tiles: np.ndarray) -> np.ndarray:
    r = client.post("/v1/encode", content=npy(tiles), headers={"Content-Type": NPY, "Accept": NPY})
    assert r.status_code == 200, r.text
    return load_npy(r.content)


def decode_npy(client, latents: np.ndarray) -> np.ndarray:
    r = client.post("/v1/decode", content=npy(latents), headers={"Content-Type": NPY, "Accept": NPY})
    assert r.status_code == 200, r.text
    return load_npy(r.content)


def test_encode_png_sheet_is_cut_row_major(client):
    tiles = random_tiles(6, seed=1)
    r = client.post("/v1/encode", content=png(sheet_of(tiles, 2, 3)), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["dtype"] == "float32" and body["latent_shape"] == [64, 1, 1]
    assert body["count"] == 6 and body["grid"] == [2, 3] and body["grids"] == [[2, 3]]
    latents = np.array(body["latents"], dtype=np.float32)
    assert latents.shape == (6, 64, 1, 1)
    np.testing.assert_allclose(latents, encode_npy(client, tiles), rtol=0, atol=1e-5)


def test_encode_npy_answer_carries_model_grid_and_shape_headers(client):
    tiles = random_tiles(4, seed=2)
    r = client.post("/v1/encode", content=png(sheet_of(tiles, 1, 4)), headers={"Content-Type": "image/png", "Accept": NPY})
    assert r.status_code == 200 and r.headers["content-type"] == NPY
    assert r.headers["X-Tessera-Model"] == "tiny"
    assert r.headers["X-Tessera-Grid"] == "1,4"
    assert r.headers["X-Tessera-Latent-Shape"] == "64,1,1"
    assert int(r.headers["X-Tessera-Cached"]) >= 0
    latents = load_npy(r.content)
    assert latents.dtype == np.float32 and latents.shape == (4, 64, 1, 1)


def test_encode_npy_input_has_no_grid(client):
    tiles = random_tiles(3, seed=3)
    r = client.post("/v1/encode", content=npy(tiles), headers={"Content-Type": NPY})
    assert r.status_code == 200
    body = r.json()
    assert body["count"] == 3 and body["grid"] is None and body["grids"] == []
    assert "X-Tessera-Grid" not in r.headers


def test_rgba_is_multiplied_by_alpha(client):
    rgba = random_tiles(2, seed=4, channels=4)
    rgba[0, :, :, 3] = 0  # fully transparent: black
    expected = ((rgba[..., :3].astype(np.uint16) * rgba[..., 3:] + 127) // 255).astype(np.uint8)
    want = encode_npy(client, expected)
    np.testing.assert_allclose(encode_npy(client, rgba), want, atol=1e-5)
    np.testing.assert_allclose(encode_npy(client, np.zeros((1, 32, 32, 3), np.uint8))[0], want[0], atol=1e-5)
    r = client.post("/v1/encode", content=png(sheet_of(rgba, 1, 2), "RGBA"), headers={"Content-Type": "image/png", "Accept": NPY})
    np.testing.assert_allclose(load_npy(r.content), want, atol=1e-5)


def test_encode_json_images_each_a_tile_or_sheet(client):
    tiles = random_tiles(3, seed=5)
    body = {"images": [b64(png(tiles[0])), b64(png(sheet_of(tiles[1:], 1, 2)))]}
    r = client.post("/v1/encode", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["count"] == 3 and out["grid"] is None and out["grids"] == [[1, 1], [1, 2]]
    np.testing.assert_allclose(np.array(out["latents"], np.float32), encode_npy(client, tiles), atol=1e-5)


@pytest.mark.parametrize("fmt", ["BMP", "WEBP", "GIF", "JPEG"])
def test_other_image_formats_are_read_as_pillow_reads_them(client, fmt):
    tiles = random_tiles(2, seed=6)
    buffer = io.BytesIO()
    options = {"lossless": True} if fmt == "WEBP" else {}
    Image.fromarray(sheet_of(tiles, 1, 2)).save(buffer, format=fmt, **options)
    pixels = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    expected = encode_npy(client, np.stack([pixels[:, :32], pixels[:, 32:]]))
    r = client.post("/v1/encode", content=buffer.getvalue(), headers={"Content-Type": f"image/{fmt.lower()}", "Accept": NPY})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(load_npy(r.content), expected, atol=1e-5)


def test_palette_grey_and_sixteen_bit_pngs(client):
    grey = np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="PNG")  # 16-bit greyscale
    scaled = ((grey.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    r = client.post("/v1/encode", content=buffer.getvalue(), headers={"Content-Type": "image/png", "Accept": NPY})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(load_npy(r.content), encode_npy(client, np.repeat(scaled[None, ..., None], 3, -1)), atol=1e-5)

    palette = Image.fromarray(random_tiles(1, seed=7)[0]).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    rgb = np.asarray(palette.convert("RGB"))[None]
    r = client.post("/v1/encode", content=buffer.getvalue(), headers={"Content-Type": "image/png", "Accept": NPY})
    np.testing.assert_allclose(load_npy(r.content), encode_npy(client, rgb), atol=1e-5)


def test_decode_png_sheet_layout_and_default_columns(client):
    tiles = decode_npy(client, encode_npy(client, random_tiles(20, seed=8)))
    latents = encode_npy(client, random_tiles(20, seed=8))
    for n, columns, query in [(6, 6, ""), (6, 4, "?columns=4"), (20, 5, ""), (1, 1, "")]:
        r = client.post("/v1/decode" + query, content=npy(latents[:n]), headers={"Content-Type": NPY})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png", r.text
        rows = math.ceil(n / columns)
        sheet = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert sheet.shape == (rows * 32, columns * 32, 3)
        assert r.headers["X-Tessera-Grid"] == f"{rows},{columns}"
        padded = np.concatenate([tiles[:n], np.zeros((rows * columns - n, 32, 32, 3), np.uint8)])
        np.testing.assert_array_equal(sheet, sheet_of(padded, rows, columns))


def test_decode_json_in_and_out(client):
    latents = encode_npy(client, random_tiles(3, seed=9))
    expected = decode_npy(client, latents)
    for payload in (latents.tolist(), latents.reshape(3, 64).tolist()):  # nested or flattened
        r = client.post("/v1/decode", json={"latents": payload}, headers={"Accept": "application/json"})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == "tiny" and body["count"] == 3
        got = np.stack([np.asarray(Image.open(io.BytesIO(base64.b64decode(t)))) for t in body["tiles"]])
        np.testing.assert_array_equal(got, expected)


def test_decode_json_columns_and_query_precedence(client):
    latents = encode_npy(client, random_tiles(4, seed=10)).tolist()
    r = client.post("/v1/decode", json={"latents": latents, "columns": 2})
    assert Image.open(io.BytesIO(r.content)).size == (64, 64)
    r = client.post("/v1/decode?columns=1", json={"latents": latents, "columns": 2})
    assert Image.open(io.BytesIO(r.content)).size == (32, 128)


def test_decode_npy_answer(client):
    tiles = decode_npy(client, encode_npy(client, random_tiles(2, seed=11)))
    assert tiles.dtype == np.uint8 and tiles.shape == (2, 32, 32, 3)


def test_accept_negotiation(client):
    latents = npy(encode_npy(client, random_tiles(1, seed=12)))
    cases = {
        "application/json;q=0.5, application/x-npy": NPY,
        "*/*": "image/png",
        "image/*": "image/png",
        "text/html;q=0.9, application/json": "application/json",
    }
    for accept, expected in cases.items():
        r = client.post("/v1/decode", content=latents, headers={"Content-Type": NPY, "Accept": accept})
        assert r.status_code == 200 and r.headers["content-type"].startswith(expected), (accept, r.headers)


def test_repeated_tiles_are_cached_and_counted(client):
    tiles = random_tiles(3, seed=13)
    sheet = png(sheet_of(np.concatenate([tiles, tiles[:1]]), 2, 2))  # tile 0 appears twice
    first = client.post("/v1/encode", content=sheet, headers={"Content-Type": "image/png"}).json()
    assert first["cached"] == 0
    second = client.post("/v1/encode", content=sheet, headers={"Content-Type": "image/png"}).json()
    assert second["cached"] == 4
    assert second["latents"] == first["latents"]
    assert first["latents"][0] == first["latents"][3]


def test_models_health_and_docs(client):
    body = client.get("/v1/models").json()
    assert body["default"] == "tiny"
    (info,) = body["models"]
    assert info["name"] == "tiny" and info["default"] is True and info["arch"] == "dcae" and info["spec"] == "dcae-t48"
    assert info["latent_shape"] == [64, 1, 1] and info["compression_ratio"] == 48.0 and info["params"] > 0
    assert len(info["weights_sha256"]) == 64 and info["metrics"] == {"val_psnr": 12.5}
    assert (info["device"], info["dtype"], info["graph"]) == ("cpu", "float32", "trace")
    assert body["limits"] == {"max_tiles_per_request": 1024, "max_body_bytes": 16 * 1024 * 1024, "max_batch_tiles": 16}
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
    schema = client.get("/openapi.json").json()
    content = schema["paths"]["/v1/encode"]["post"]["requestBody"]["content"]
    assert {"image/png", NPY, "application/json"} <= set(content)
    assert "example" in content["application/json"]
    assert client.get("/docs").status_code == 200


def test_metrics_exposition(client):
    client.post("/v1/encode", content=npy(random_tiles(2, seed=14)), headers={"Content-Type": NPY})
    text = client.get("/metrics").text
    for name in (
        'tessera_requests_total{endpoint="/v1/encode",status="2xx"}',
        'tessera_tiles_total{model="tiny",op="encode",source="model"}',
        'tessera_batch_size_tiles_bucket{le="1.0",model="tiny",op="encode"}',
        'tessera_model_info{arch="dcae",compression_ratio="48",model="tiny"',
        "tessera_cache_misses_total",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
