"""Hand-written hostile inputs: every one is answered 2xx, or 4xx with an explanation; the odd
but valid ones (16-bit, palette, Fortran-order, big-endian) give the same result as their
plain equivalents; nothing is unpickled and nothing big is allocated for a small body."""

from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from reliability_bodies import (
    animated,
    bomb_png,
    corrupted,
    encoded,
    npy,
    npy_declaring,
    palette_png,
    pickled_npy,
    png16_grey,
    png16_rgb,
    raw_png,
    truncated,
)
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, load_npy, random_tiles
from tessera.testing.measuring import measuring

PNG = "image/png"
JSON = "application/json"
LIMITS = {"max_tiles_per_request": 16, "max_body_bytes": 64 * 1024, "max_image_pixels": 128 * 128, "cache_max_bytes": 0}


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    with serving(checkpoint_dir, **LIMITS) as client:
        yield client


def check(response, *statuses: int, code: str | None = None) -> dict | None:
    """The status is one of ``statuses``; a 4xx says what was wrong ({"detail", "code"})."""
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"detail", "code"} and len(body["detail"]) >= 20, body
    if code is not None:
        assert body["code"] == code, body
    return body


def encode(client, body: bytes, content_type: str = PNG, **params):
    return client.post("/v1/encode", params=params, content=body, headers={"Content-Type": content_type, "Accept": NPY})


def decode(client, body: bytes, content_type: str = NPY, **params):
    return client.post("/v1/decode", params=params, content=body, headers={"Content-Type": content_type, "Accept": NPY})


def latents_of(client, tiles: np.ndarray) -> np.ndarray:
    response = encode(client, npy(tiles), NPY)
    check(response, 200)
    return load_npy(response.content)


# -- images ------------------------------------------------------------------------------------


TILE_PNG = encoded(Image.fromarray(random_tiles(1, seed=1)[0]))


@pytest.mark.parametrize("keep", [0.02, 0.3, 0.6, 0.95])
def test_truncated_png_is_400(client, keep):
    check(encode(client, truncated(TILE_PNG, keep)), 400, code="undecodable")


@pytest.mark.parametrize("seed", range(6))
def test_corrupt_png_is_4xx_or_decoded(client, seed):
    check(encode(client, corrupted(TILE_PNG, seed)), 200, 400, 413, 422)  # a flipped pixel byte may still decode


@pytest.mark.parametrize("width, height", [(60000, 60000), (2**31 - 1, 1), (1, 2**31 - 1), (2**16, 2**16)])
def test_decompression_bomb_is_413_before_decoding(client, width, height):
    body = bomb_png(width, height)
    assert len(body) < 100
    started = time.monotonic()
    detail = check(encode(client, body), 413, 400, code=None)
    if measuring():  # refused from the header: no time spent decoding
        assert time.monotonic() - started < 1.0
    assert "pixels" in detail["detail"] or "not a readable image" in detail["detail"], detail


@pytest.mark.parametrize("body, code", [(raw_png(0, 0, 8, 2), "undecodable"), (raw_png(1, 1, 8, 2), "bad_sheet_size"),
                                        (raw_png(32, 0, 8, 2), "undecodable"), (raw_png(33, 32, 8, 6), "bad_sheet_size")])
def test_empty_and_tiny_images_are_refused(client, body, code):
    check(encode(client, body), 400, 422, code=code)


def test_16_bit_rgb_png_reads_as_its_high_bytes(client):
    rng = np.random.default_rng(0)  # the pixels png16_rgb(seed=0) writes
    pixels = rng.integers(0, 65536, size=(32, 32 * 3), dtype=np.uint16).reshape(1, 32, 32, 3)
    response = encode(client, png16_rgb(1, 1, seed=0))
    check(response, 200)
    np.testing.assert_allclose(load_npy(response.content), latents_of(client, (pixels >> 8).astype(np.uint8)), atol=1e-5)


def test_16_bit_grey_png_is_scaled_to_8_bits(client):
    grey = np.asarray(Image.open(io.BytesIO(png16_grey(seed=3))), dtype=np.int64)
    expected = np.repeat(((grey * 255 + 32767) // 65535).astype(np.uint8)[None, ..., None], 3, axis=-1)
    response = encode(client, png16_grey(seed=3))
    check(response, 200)
    np.testing.assert_allclose(load_npy(response.content), latents_of(client, expected), atol=1e-5)


@pytest.mark.parametrize("transparent", [False, True])
def test_palette_png_is_converted_like_rgba(client, transparent):
    body = palette_png(seed=4, transparent=transparent)
    rgba = np.asarray(Image.open(io.BytesIO(body)).convert("RGBA"))[None]
    if not transparent:
        rgba = rgba[..., :3]
    response = encode(client, body)
    check(response, 200)
    np.testing.assert_allclose(load_npy(response.content), latents_of(client, rgba), atol=1e-5)


@pytest.mark.parametrize("fmt, content_type", [("GIF", "image/gif"), ("PNG", PNG), ("WEBP", "image/webp")])
def test_animated_images_are_422(client, fmt, content_type):
    body = check(encode(client, animated(fmt), content_type), 422, code="animated_image")
    assert "frames" in body["detail"]


def test_declared_type_does_not_matter_but_unknown_formats_are_refused(client):
    check(encode(client, TILE_PNG, "image/webp"), 200)  # read by its content, as Pillow does
    tiff = encoded(Image.fromarray(random_tiles(1)[0]), "TIFF")
    check(encode(client, tiff), 400, code="undecodable")  # not one of the accepted decoders


# -- npy -----------------------------------------------------------------------------------------


def test_object_arrays_are_never_unpickled(client, tmp_path):
    marker = tmp_path / "unpickled"
    for path in ("/v1/encode", "/v1/decode"):
        response = client.post(path, content=pickled_npy(marker), headers={"Content-Type": NPY})
        check(response, 422, code="bad_dtype")
    assert not marker.exists()


@pytest.mark.parametrize("shape, dtype", [((10**9, 32, 32, 3), "|u1"), ((2**40,), "<f4"), ((2**62, 2), "|u1"), ((3, 0, 2**63 - 1), "<f8")])
def test_npy_declaring_a_huge_array_is_400_without_allocating(client, shape, dtype):
    body = npy_declaring(shape, dtype, b"\0" * 64)
    for response in (encode(client, body, NPY), decode(client, body)):
        detail = check(response, 400, 422)
        assert detail["code"] in ("undecodable", "bad_shape", "bad_latent_shape"), detail


@pytest.mark.parametrize(
    "array",
    [np.zeros((2, 32, 32, 3), np.float32), np.zeros((2, 32, 32, 3), bool), np.zeros((2, 32, 32, 3), "<U1"),
     np.zeros((2, 32, 32, 3), "M8[s]"), np.zeros((2, 32, 32), np.uint8), np.zeros((), np.uint8),
     np.zeros((0, 32, 32, 3), np.uint8), np.zeros(2, dtype=[("r", "u1"), ("g", "u1")]), np.zeros((2, 32, 32, 3, 1), np.uint8)],
    ids=["float32", "bool", "unicode", "datetime", "no-channels", "scalar", "empty", "structured", "5d"],
)
def test_wrong_tile_dtypes_and_shapes_are_422(client, array):
    check(encode(client, npy(array), NPY), 422)


def test_odd_but_valid_npy_layouts_give_the_same_latents(client):
    tiles = random_tiles(3, seed=5)
    reference = latents_of(client, tiles)
    np.testing.assert_allclose(latents_of(client, np.asfortranarray(tiles)), reference, atol=1e-5)
    latents = reference.astype(np.float32)
    plain = decode(client, npy(latents))
    check(plain, 200)
    for variant in (latents.astype(">f4"), latents.astype(np.float64), np.asfortranarray(latents), latents.reshape(3, -1)):
        response = decode(client, npy(variant))
        check(response, 200)
        assert response.content == plain.content


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 1e39])
def test_non_finite_latents_are_422(client, value):
    latents = np.zeros((2, 64, 1, 1), np.float64)
    latents[1, 7] = value
    body = check(decode(client, npy(latents)), 422, code="non_finite")
    assert "latent 1" in body["detail"]
    as_json = json.dumps({"latents": latents.reshape(2, -1).tolist()}).encode()  # NaN/Infinity literals
    check(decode(client, as_json, JSON), 422)


# -- JSON ----------------------------------------------------------------------------------------


TILE_B64 = base64.b64encode(TILE_PNG).decode()


@pytest.mark.parametrize(
    "path, body",
    [
        ("/v1/encode", {"images": [1, 2]}),
        ("/v1/encode", {"images": TILE_B64}),
        ("/v1/encode", {"images": [{"png": TILE_B64}]}),
        ("/v1/encode", {"images": [TILE_B64], "extra": [1] * 10}),
        ("/v1/encode", {"images": [None]}),
        ("/v1/encode", {"image": [TILE_B64]}),
        ("/v1/encode", ["images", TILE_B64]),
        ("/v1/encode", None),
        ("/v1/encode", 3.5),
        ("/v1/decode", {"latents": "abc"}),
        ("/v1/decode", {"latents": [[True] * 64]}),
        ("/v1/decode", {"latents": [[0.0] * 64], "columns": "two"}),
        ("/v1/decode", {"latents": [[0.0] * 64], "columns": 1.5}),
        ("/v1/decode", {"latents": [[[0.0]] * 64]}),
        ("/v1/decode", {"latents": [[1e400] * 64]}),
        ("/v1/decode", {"latents": [0.0] * 64}),
        ("/v1/decode", {"latents": {"0": [0.0] * 64}}),
    ],
)
def test_json_with_wrong_types_is_4xx(client, path, body):
    raw = json.dumps(body).replace("Infinity", "1e400").encode()
    check(client.post(path, content=raw, headers={"Content-Type": JSON}), 200, 400, 422)


@pytest.mark.parametrize("depth", [100, 1000, 100_000])
@pytest.mark.parametrize("path", ["/v1/encode", "/v1/decode"])
def test_deeply_nested_json_is_4xx(client, path, depth):
    for body in ("[" * depth + "]" * depth, '{"latents": ' + "[" * depth + "]" * depth + "}", '{"a":' * depth + "1" + "}" * depth):
        check(client.post(path, content=body.encode(), headers={"Content-Type": JSON}), 400, 413, 422)


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b'{"images": ["\xff"]}', "\ufeff{}".encode(), b"", b"null", b'{"images": []}' * 3])
def test_malformed_json_text_is_4xx(client, body):
    check(client.post("/v1/encode", content=body, headers={"Content-Type": JSON}), 400, 422)


# -- size limits and query parameters ------------------------------------------------------------------


def test_body_over_the_limit_is_413_declared_or_streamed(client):
    big = npy(random_tiles(16, seed=6))  # 48 KiB fits; 32 tiles (96 KiB) do not
    check(encode(client, big, NPY), 200)
    too_big = npy(random_tiles(32, seed=7))
    check(encode(client, too_big, NPY), 413, code="too_large")

    def chunks():  # no Content-Length: the limit is enforced while reading the stream
        for start in range(0, len(too_big), 4096):
            yield too_big[start : start + 4096]

    response = client.post("/v1/encode", content=chunks(), headers={"Content-Type": NPY})
    assert "content-length" not in response.request.headers
    check(response, 413, code="too_large")


@pytest.mark.parametrize(
    "query",
    ["?unknown=1", "?model=tiny&model=tiny", "?model=tiny&colour=red&columns=", "?%ff%fe=%00", "?model=%00",
     "?model=" + "x" * 5000, "?" + "&".join(f"p{i}={i}" for i in range(500)), "?model=ti%0Any", "?columns=2&columns=x"],
)
def test_unknown_and_odd_query_parameters_never_break_a_request(client, query):
    latents = npy(np.zeros((2, 64, 1, 1), np.float32))
    check(client.post("/v1/decode" + query, content=latents, headers={"Content-Type": NPY}), 200, 404, 422)
    check(client.post("/v1/encode" + query, content=npy(random_tiles(1)), headers={"Content-Type": NPY}), 200, 404, 422)
