"""Encode effort (``/v1/encode?refine=N``): refined latents decode closer to their tiles, are
cached under their own key, stop at the request's deadline with what they have, and are counted."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tessera.tiles import MAX_REFINE_STEPS
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY

TILES = np.random.default_rng(3).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def encode(client, tiles: np.ndarray, **query):
    r = client.post("/v1/encode", params=query, content=npy(tiles),
                    headers={"Content-Type": NPY, "Accept": "application/json"})
    assert r.status_code == 200, r.text
    return r


def error_of(client, latents: list) -> float:
    """Mean squared error of the decoded latents against TILES, in [0, 1] units."""
    r = client.post("/v1/decode", content=npy(np.asarray(latents, np.float32)),
                    headers={"Content-Type": NPY, "Accept": NPY})
    assert r.status_code == 200, r.text
    tiles = np.load(io.BytesIO(r.content)).astype(np.float64) / 255
    return float(((tiles - TILES / 255) ** 2).mean())


def metric(client, name: str, **labels) -> float:
    return sum(sample.value for family in text_string_to_metric_families(client.get("/metrics").text)
               for sample in family.samples
               if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()))


def test_refined_latents_decode_closer_and_are_cached_under_their_own_key(checkpoint_dir):
    with serving(checkpoint_dir) as client:
        plain = encode(client, TILES).json()
        refined = encode(client, TILES, refine=20)
        body = refined.json()
        assert (plain["refined"], body["refined"], refined.headers["X-Tessera-Refined"]) == (None, 20, "20")
        assert body["cached"] == 0  # the plain latents were cached, the refined ones were not yet
        assert error_of(client, body["latents"]) < error_of(client, plain["latents"])
        again = encode(client, TILES, refine=20).json()
        assert (again["cached"], again["refined"], again["latents"]) == (len(TILES), 20, body["latents"])
        other = encode(client, TILES, refine=3).json()  # another step count is another key
        assert other["cached"] == 0 and other["latents"] != body["latents"]
        assert encode(client, TILES).json()["latents"] == plain["latents"]  # the plain key is untouched
        assert metric(client, "tessera_refined_tiles_total", outcome="complete") == 2 * len(TILES)
        assert metric(client, "tessera_refine_steps_total") == len(TILES) * 23
        assert metric(client, "tessera_tiles_total", op="refine", source="cache") == len(TILES)
        assert metric(client, "tessera_batch_size_tiles_count", op="refine") >= 23


def test_a_refinement_that_runs_out_of_deadline_answers_what_it_has_and_caches_nothing(checkpoint_dir):
    with serving(checkpoint_dir, request_timeout_s=1.5) as client:
        served = client.app.state.tessera.registry.get(None)
        step = served.refiner.infer

        def slow_step(rows: np.ndarray) -> np.ndarray:  # a model whose steps take 0.2 s
            time.sleep(0.2)
            return step(rows)

        served.refiner.infer = slow_step
        first = encode(client, TILES, refine=MAX_REFINE_STEPS)
        done = first.json()["refined"]
        assert 0 <= done < MAX_REFINE_STEPS and first.headers["X-Tessera-Refined"] == str(done)
        assert np.isfinite(np.asarray(first.json()["latents"])).all()
        assert encode(client, TILES, refine=MAX_REFINE_STEPS).json()["cached"] == 0  # cut short: not cached
        assert metric(client, "tessera_refined_tiles_total", outcome="cut_short") == 2 * len(TILES)


@pytest.mark.parametrize("value", ["-1", str(MAX_REFINE_STEPS + 1), "lots"])
def test_refine_outside_its_bounds_is_a_422_that_names_it(client, value):
    r = client.post("/v1/encode", params={"refine": value}, content=npy(TILES[:1]), headers={"Content-Type": NPY})
    assert r.status_code == 422, r.text
    assert "refine" in r.text


def test_the_openapi_document_declares_refines_bounds(client):
    params = client.get("/openapi.json").json()["paths"]["/v1/encode"]["post"]["parameters"]
    refine = next(p for p in params if p["name"] == "refine")
    assert (refine["schema"]["minimum"], refine["schema"]["maximum"], refine["schema"]["default"]) == (0, MAX_REFINE_STEPS, 0)
