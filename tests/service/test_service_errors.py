"""Every error case answers its status with {"detail", "code"}, never a 500."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, b64, npy, png, random_tiles

ENCODE = "/v1/encode"
DECODE = "/v1/decode"


def check(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"detail", "code"} and len(body["detail"]) > 20, body
    if code is not None:
        assert body["code"] == code, body
    return body


def bomb_png(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` pixels."""
    data = bytearray(png(np.zeros((32, 32, 3), np.uint8)))
    ihdr = 8 + 8  # signature, then length + type of the IHDR chunk
    data[ihdr : ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[12 : ihdr + 13]))
    data[ihdr + 13 : ihdr + 17] = struct.pack(">I", crc)
    return bytes(data)


def animated_gif() -> bytes:
    frames = [Image.fromarray(t) for t in random_tiles(2, seed=1)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
    return buffer.getvalue()


# -- 400 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, body",
    [
        ("image/png", b"not an image at all"),
        ("image/png", png(random_tiles(1)[0])[:60]),  # truncated
        ("image/png", b""),
        (NPY, b"\x93NUMPY garbage"),
        (NPY, npy(random_tiles(2))[:-100]),  # truncated
        (NPY, b"PK\x03\x04 a zip file"),
        ("application/json", b"{not json"),
        ("application/json", b'{"images": ["***not base64***"]}'),
        ("application/json", ('{"images": ["' + b64(b"plain text") + '"]}').encode()),
    ],
)
def test_undecodable_bodies_are_400(client, content_type, body):
    check(client.post(ENCODE, content=body, headers={"Content-Type": content_type}), 400, "undecodable")


def test_undecodable_latents_are_400(client):
    check(client.post(DECODE, content=b"\x93NUMPY\x01\x00zz", headers={"Content-Type": NPY}), 400)
    check(client.post(DECODE, content=b"[1, 2", headers={"Content-Type": "application/json"}), 400)


# -- 404, 405, 406 -------------------------------------------------------------------------------


def test_unknown_model_lists_the_known_ones(client):
    body = check(client.post(ENCODE + "?model=nope", content=npy(random_tiles(1)), headers={"Content-Type": NPY}), 404)
    assert body["code"] == "unknown_model" and "'tiny'" in body["detail"]
    check(client.post(DECODE + "?model=nope", content=b"x", headers={"Content-Type": NPY}), 404, "unknown_model")


def test_unknown_route_and_method(client):
    check(client.get("/v2/nothing"), 404, "not_found")
    check(client.get(ENCODE), 405, "method_not_allowed")


def test_unacceptable_accept_is_406(client):
    body = check(client.post(ENCODE, content=npy(random_tiles(1)), headers={"Content-Type": NPY, "Accept": "text/html"}), 406)
    assert "application/x-npy" in body["detail"]


# -- 413 ---------------------------------------------------------------------------------------


def test_limits_give_413(checkpoint_dir):
    with serving(checkpoint_dir, max_body_bytes=20000, max_tiles_per_request=4, max_image_pixels=64 * 64) as c:
        check(c.post(ENCODE, content=npy(random_tiles(8)), headers={"Content-Type": NPY}), 413, "too_large")  # body
        small = np.zeros((5, 32, 32, 3), np.uint8)
        check(c.post(ENCODE, content=npy(small), headers={"Content-Type": NPY}), 413)  # 5 tiles > 4 (fits the body)
        check(c.post(ENCODE, content=png(np.zeros((32, 160, 3), np.uint8)), headers={"Content-Type": "image/png"}), 413)
        check(c.post(ENCODE, content=png(np.zeros((96, 96, 3), np.uint8)), headers={"Content-Type": "image/png"}), 413)
        two = {"images": [b64(png(np.zeros((32, 96, 3), np.uint8)))] * 2}  # 3 + 3 tiles > 4
        check(c.post(ENCODE, json=two), 413)
        check(c.post(DECODE, content=npy(np.zeros((5, 64, 1, 1), np.float32)), headers={"Content-Type": NPY}), 413)
        check(c.post(DECODE, json={"latents": np.zeros((5, 64)).tolist()}), 413)
        r = c.post(ENCODE, content=b"x" * 100, headers={"Content-Type": NPY, "Content-Length": "99999999"})
        assert r.status_code in (400, 413)


def test_decompression_bomb_is_refused_before_decoding(client):
    body = check(client.post(ENCODE, content=bomb_png(60000, 60000), headers={"Content-Type": "image/png"}), 413)
    assert "pixels" in body["detail"]


# -- 415 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, content_type", [(ENCODE, "text/plain"), (ENCODE, None), (DECODE, "image/png"),
                                                (ENCODE, "application/octet-stream")])
def test_unsupported_media_types_are_415(client, path, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    body = check(client.post(path, content=b"123", headers=headers), 415, "unsupported_media_type")
    assert "application/x-npy" in body["detail"]


# -- 422 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type, body, code",
    [
        ("image/png", png(np.zeros((33, 32, 3), np.uint8)), "bad_sheet_size"),
        ("image/png", png(np.zeros((1, 1, 3), np.uint8)), "bad_sheet_size"),
        ("image/gif", animated_gif(), "animated_image"),
        (NPY, npy(np.zeros((2, 32, 32), np.uint8)), "bad_shape"),
        (NPY, npy(np.zeros((2, 16, 16, 3), np.uint8)), "bad_shape"),
        (NPY, npy(np.zeros((0, 32, 32, 3), np.uint8)), "bad_shape"),
        (NPY, npy(np.zeros((2, 32, 32, 3), np.float32)), "bad_dtype"),
        (NPY, npy(np.array([{"a": 1}], dtype=object)), "bad_dtype"),
        ("application/json", b'{"images": 5}', "bad_json"),
        ("application/json", b'{"images": []}', "bad_json"),
        ("application/json", b"[]", "bad_json"),
        ("application/json", b"[" * 5000 + b"]" * 5000, None),
    ],
)
def test_wrong_inputs_are_422(client, content_type, body, code):
    response = client.post(ENCODE, content=body, headers={"Content-Type": content_type})
    if code is None:  # deeply nested JSON: refused either as bad JSON or as the wrong shape
        assert response.status_code in (400, 422), response.text
    else:
        check(response, 422, code)


@pytest.mark.parametrize(
    "body, code",
    [
        (npy(np.zeros((2, 32), np.float32)), "bad_latent_shape"),
        (npy(np.zeros((2, 64, 2, 1), np.float32)), "bad_latent_shape"),
        (npy(np.zeros((64,), np.float32)), "bad_latent_shape"),
        (npy(np.full((2, 64, 1, 1), np.nan, np.float32)), "non_finite"),
        (npy(np.full((1, 64), 1e300)), "non_finite"),
        (npy(np.zeros((2, 64), np.complex64)), "bad_dtype"),
    ],
)
def test_wrong_latents_are_422(client, body, code):
    check(client.post(DECODE, content=body, headers={"Content-Type": NPY}), 422, code)


def test_wrong_json_latents_are_422(client):
    check(client.post(DECODE, json={"latents": [[1.0] * 64, [1.0] * 63]}), 422, "bad_latent_shape")
    check(client.post(DECODE, json={"latents": [["a"] * 64]}), 422, "bad_json")
    check(client.post(DECODE, json={"latents": []}), 422, "bad_json")
    check(client.post(DECODE, json={"latents": [[1.0] * 64], "columns": 0}), 422, "bad_json")
    check(client.post(DECODE, json={"latents": [[True] * 64]}), 422, "bad_json")  # booleans are no numbers
    check(client.post(DECODE, json={"latents": [[1.0] * 64], "columns": True}), 422, "bad_json")
    r = client.post(DECODE, content=b'{"latents": [[NaN' + b", 0" * 63 + b"]]}", headers={"Content-Type": "application/json"})
    assert r.status_code == 422, r.text


def test_bad_query_parameters_are_422(client):
    latents = npy(np.zeros((1, 64, 1, 1), np.float32))
    for query in ("columns=0", "columns=abc", "columns=99999"):
        check(client.post(f"{DECODE}?{query}", content=latents, headers={"Content-Type": NPY}), 422, "invalid_request")
    body = check(client.post(f"{DECODE}?modle=tiny", content=latents, headers={"Content-Type": NPY}), 422, "unknown_parameter")
    assert "modle" in body["detail"] and "columns" in body["detail"]  # names the typo and what is known
    check(client.post(f"{ENCODE}?columns=2", content=npy(random_tiles(1)), headers={"Content-Type": NPY}), 422, "unknown_parameter")


def test_query_values_the_fast_path_does_not_judge_get_fastapis_answer(client):
    """/v1/encode and /v1/decode check plain query values themselves (service.http.front_door) and
    leave the rest to FastAPI: the answers are FastAPI's either way."""
    latents = npy(np.zeros((1, 64, 1, 1), np.float32))
    for query in ("columns=%2B3", "columns=%203", "columns=3.0", f"model={'x' * 201}"):
        r = client.post(f"{DECODE}?{query}", content=latents, headers={"Content-Type": NPY})
        assert r.status_code in (200, 422), (query, r.text)
        if r.status_code == 422:
            assert r.json()["code"] == "invalid_request" and "see /docs" in r.json()["detail"], (query, r.text)
    r = client.post(f"{DECODE}?columns=1&model=&columns=4", content=npy(np.zeros((8, 64, 1, 1), np.float32)),
                    headers={"Content-Type": NPY})
    assert r.status_code == 200 and r.headers["X-Tessera-Grid"] == "2,4"  # the last value of a repeated parameter
    check(client.post(f"{ENCODE}?model={'x' * 201}", content=npy(random_tiles(1)), headers={"Content-Type": NPY}),
          422, "invalid_request")
