"""What a crafted request must not do: get a 500 from an npy header, stall the server with an
image built to be slow, read library internals in an error, or find an undocumented door.

The server must answer every body with 2xx or a 4xx that says what was wrong; images built to
be slow to decode are refused by structure (JPEG scans, PNG chunks, GIF frames) or by the decode
time budget, off the event loop; a 500, should one happen, is one log line with a request id and
closes the connection."""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import httpx

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reliability_bodies import many_chunks_png, many_frames_gif, many_scans_jpeg, pickled_npy
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, npy, random_tiles
from tessera.testing.serve import local_server

JSON = "application/json"
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    with serving(checkpoint_dir, cache_max_bytes=0) as client:
        yield client


def npy_with_header(header: str, data: bytes = b"\0" * 3072) -> bytes:
    raw = header.encode("utf-8", "surrogatepass")
    raw += b" " * (63 - (10 + len(raw)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(raw).to_bytes(2, "little") + raw + data


def refused(response, *statuses: int) -> dict:
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    body = response.json()
    assert set(body) == {"detail", "code"}, body
    return body


# -- npy headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["(True, 32, 32, 3)", "(1, 32, 32, True)", "(1.0, 32, 32, 3)", "(-1, 32, 32, 3)",
                                   "(" * 200 + ")" * 200, "((1, 32), 32, 3)", "'1, 32, 32, 3'", "[1, 32, 32, 3]"])
@pytest.mark.parametrize("path", ["/v1/encode", "/v1/decode"])
def test_crafted_npy_shapes_are_400(client, path, shape):
    body = npy_with_header(f"{{'descr': '|u1', 'fortran_order': False, 'shape': {shape}, }}")
    detail = refused(client.post(path, content=body, headers={"Content-Type": NPY}), 400)
    assert detail["code"] == "undecodable"


@pytest.mark.parametrize("header", [
    "{'descr': '|u1', 'fortran_order': 1, 'shape': (1, 32, 32, 3), }",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 32, 32, 3), 'extra': 0}",
    "{'descr': " + "[" * 5000 + "]" * 5000 + ", 'fortran_order': False, 'shape': (1,)}",
    "{'descr': '|u1', 'fortran_order': False, 'shape': (1, 32, 32, 3)" + " " * 5000 + "}",
    "__import__('os').system('true')", "{1: 2}", "", "\xff\xfe",
])
def test_crafted_npy_headers_are_400(client, header):
    for path in ("/v1/encode", "/v1/decode"):
        refused(client.post(path, content=npy_with_header(header), headers={"Content-Type": NPY}), 400)


literals = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**64) | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4).map(tuple) | st.lists(inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(descr=st.sampled_from(["'|u1'", "'<f4'", "'<U3'", "'O'", "'|b1'", "'>i8'"]) | literals.map(repr),
       order=literals.map(repr) | st.sampled_from(["False", "True"]),
       shape=literals.map(repr) | st.lists(st.integers(0, 40), max_size=5).map(lambda s: repr(tuple(s))))
def test_fuzzed_npy_headers_never_get_a_5xx(client, descr, order, shape):
    body = npy_with_header(f"{{'descr': {descr}, 'fortran_order': {order}, 'shape': {shape}, }}")
    for path in ("/v1/encode", "/v1/decode"):
        response = client.post(path, content=body, headers={"Content-Type": NPY})
        assert response.status_code < 500, (response.status_code, response.text[:300])


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@FUZZ
@given(body=st.dictionaries(st.sampled_from(["images", "latents", "columns", "model", "x"]), json_values, max_size=3)
       | json_values)
def test_fuzzed_json_bodies_never_get_a_5xx(client, body):
    raw = json.dumps(body).encode()
    for path in ("/v1/encode", "/v1/decode"):
        response = client.post(path, content=raw, headers={"Content-Type": JSON})
        assert response.status_code < 500, (response.status_code, response.text[:300])


# -- images built to be slow -----------------------------------------------------------------------------


@pytest.mark.parametrize("body, content_type, code", [
    (lambda: many_scans_jpeg(2000), "image/jpeg", "too_many_scans"),
    (lambda: many_chunks_png(20_000), "image/png", "too_many_chunks"),
    (lambda: many_frames_gif(2000), "image/gif", "animated_image"),
], ids=["jpeg-scans", "png-chunks", "gif-frames"])
def test_images_built_to_be_slow_are_refused_by_their_structure(client, body, content_type, code):
    detail = refused(client.post("/v1/encode", content=body(), headers={"Content-Type": content_type}), 422)
    assert detail["code"] == code, detail


def test_a_png_of_many_small_chunks_under_the_limit_still_decodes(client):
    assert client.post("/v1/encode", content=many_chunks_png(500), headers={"Content-Type": "image/png"}).status_code == 200


def test_an_image_slower_than_the_decode_budget_is_refused_and_the_server_answers_meanwhile(checkpoint_dir):
    limits = {"decode_timeout_s": 0.05, "max_image_pixels": 2048 * 2048, "max_tiles_per_request": 4096,
              "max_queue_tiles": 8192, "max_batch_tiles": 4}
    with serving(checkpoint_dir, **limits) as client:
        slow = many_scans_jpeg(90)  # under the scan limit, but 90 passes over 4M pixels
        answers = []
        sender = threading.Thread(target=lambda: answers.append(
            client.post("/v1/encode", content=slow, headers={"Content-Type": "image/jpeg"})))
        sender.start()
        health = [client.get("/healthz").status_code for _ in range(20)]
        sender.join()
    assert health == [200] * 20
    detail = refused(answers[0], 422)
    assert detail["code"] == "decode_timeout" and "TESSERA_DECODE_TIMEOUT_S" in detail["detail"]


SLOW_IMAGES = {  # name -> (body, content type)
    "progressive JPEG, 2,000 scans over 2048x2048": (lambda: many_scans_jpeg(2000), "image/jpeg"),
    "progressive JPEG, 90 scans over 2048x2048": (lambda: many_scans_jpeg(90), "image/jpeg"),
    "PNG of 20,000 IDAT chunks": (lambda: many_chunks_png(20_000), "image/png"),
    "GIF of 2,000 frames": (lambda: many_frames_gif(2000), "image/gif"),
}


@pytest.mark.skipif(not os.environ.get("TESSERA_RELIABILITY_OUT"), reason="a measurement of the machine: make reliability")
def test_health_checks_stay_fast_while_slow_images_are_refused(checkpoint_dir, tmp_path, measurements):
    """Default settings (a 2 s decode budget), a real server: /healthz is polled while each image
    built to be slow is sent; its p99 must stay under 100 ms."""
    server = local_server(checkpoint_dir, tmp_path / "server.log", TESSERA_MAX_IMAGE_PIXELS=str(2048 * 2048),
                           TESSERA_MAX_TILES_PER_REQUEST="4096", TESSERA_MAX_QUEUE_TILES="8192")
    found = []
    try:
        with httpx.Client(base_url=server.url, timeout=60) as health:
            for name, (make, content_type) in SLOW_IMAGES.items():
                body, answer, polls = make(), [], []

                def send() -> None:
                    started = time.monotonic()
                    response = httpx.post(server.url + "/v1/encode", content=body, headers={"Content-Type": content_type},
                                          timeout=60)
                    answer.append((response, time.monotonic() - started))

                sender = threading.Thread(target=send)
                sender.start()
                while sender.is_alive() or len(polls) < 20:
                    started = time.monotonic()
                    assert health.get("/healthz").status_code == 200
                    polls.append(time.monotonic() - started)
                sender.join()
                response, seconds = answer[0]
                code = response.json().get("code") if response.status_code >= 400 else None
                found.append({"image": name, "bytes": len(body), "answer": f"{response.status_code} {code}" if code else str(response.status_code),
                              "refused_after_s": round(seconds, 3), "healthz_ms": latency_ms_p99(polls)})
    finally:
        server.stop()
    measurements["slow_images"] = found
    # refused by structure, whatever the machine; the 90-scan JPEG is a valid image that decodes
    # within the default 2 s budget on a fast enough machine, else it is refused for the budget
    for f in found:
        expected = ("200", "422 decode_timeout") if "90 scans" in f["image"] else ("422",)
        assert f["answer"].startswith(expected), f
    assert all(f["healthz_ms"]["p99"] < 100 for f in found), found


def latency_ms_p99(seconds: list[float]) -> dict[str, float]:
    values = np.array(seconds) * 1000
    return {"p50": round(float(np.percentile(values, 50)), 2), "p99": round(float(np.percentile(values, 99)), 2),
            "max": round(float(values.max()), 2)}


# -- hygiene ----------------------------------------------------------------------------------------------


def test_error_details_hold_no_object_reprs_or_library_advice(client, tmp_path):
    for body, content_type in ((b"\x89PNG\r\n\x1a\n garbage", "image/png"), (b"GIF89a garbage", "image/gif"),
                               (b"not an image at all", "image/webp")):
        detail = refused(client.post("/v1/encode", content=body, headers={"Content-Type": content_type}), 400)["detail"]
        assert " at 0x" not in detail and "<" not in detail, detail
    for path in ("/v1/encode", "/v1/decode"):
        detail = refused(client.post(path, content=pickled_npy(tmp_path / "x"), headers={"Content-Type": NPY}), 422)
        assert "allow_pickle" not in detail["detail"] and "pickle" not in detail["detail"].lower(), detail


def test_no_redirect_is_built_from_the_host_header(client):
    response = client.get("/v1/models/", headers={"Host": "evil.example"}, follow_redirects=False)
    assert response.status_code == 404 and "location" not in response.headers


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
def test_head_works_on_the_health_checks(client, path):
    response = client.head(path)
    assert response.status_code == 200 and response.content == b""


def test_docs_load_from_local_assets(client):
    page = client.get("/docs").text
    assert "https://" not in page and "http://" not in page
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
    assert client.get("/docs-assets/swagger-ui.css").status_code == 200


@pytest.mark.parametrize("path, body", [("/v1/encode", {"images": ["AAAA"], "modle": "x"}),
                                        ("/v1/decode", {"latents": [[0.0] * 64], "colums": 2})])
def test_unknown_json_fields_are_422(client, path, body):
    detail = refused(client.post(path, content=json.dumps(body).encode(), headers={"Content-Type": JSON}), 422)
    assert detail["code"] == "unknown_field" and ("modle" in detail["detail"] or "colums" in detail["detail"])


@pytest.mark.parametrize("encoding", ["gzip", "br", "deflate, gzip"])
def test_a_content_encoding_is_415_not_ignored(client, encoding):
    body = npy(random_tiles(1))
    response = client.post("/v1/encode", content=body, headers={"Content-Type": NPY, "Content-Encoding": encoding})
    assert refused(response, 415)["code"] == "unsupported_encoding"
    assert client.post("/v1/encode", content=body, headers={"Content-Type": NPY, "Content-Encoding": "identity"}
                       ).status_code == 200


def test_a_bug_is_one_log_line_with_a_request_id_and_closes_the_connection(client, monkeypatch, caplog):
    from tessera.service.pipeline import formats

    def broken(body, *options):
        raise RuntimeError("a bug")

    monkeypatch.setitem(formats.ENCODE_READERS, NPY, formats.Reader(broken, formats.INLINE_BYTES))
    with caplog.at_level(logging.ERROR):
        response = client.post("/v1/encode", content=npy(random_tiles(1)), headers={"Content-Type": NPY})
    assert response.status_code == 500 and response.json()["code"] == "internal_error"
    request_id = response.headers["x-request-id"]
    assert request_id in response.json()["detail"] and response.headers["connection"] == "close"
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and request_id in errors[0].getMessage() and errors[0].exc_info is None
    assert "RuntimeError: a bug" in errors[0].getMessage()
