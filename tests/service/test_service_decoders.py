"""A model's second decoder (``<model>.sharp.safetensors``): served as ``/v1/decode?decoder=sharp``
for the same latents, listed in /v1/models and the OpenAPI enum, refused for a model without one,
and never loaded when its encoder is not the model's."""

from __future__ import annotations

import io

import numpy as np
import pytest
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY
from tessera.testing.checkpoints import save_checkpoint, save_sharpened


@pytest.fixture(scope="module")
def two_decoders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("decoders")
    base = save_checkpoint(folder / "tiny.safetensors")
    save_checkpoint(folder / "other.safetensors", seed=1)
    save_sharpened(base, folder / "tiny.sharp.safetensors")
    return folder


def decode(client, latents: np.ndarray, **query):
    buffer = io.BytesIO()
    np.save(buffer, latents)
    return client.post("/v1/decode", params=query, content=buffer.getvalue(),
                       headers={"Content-Type": NPY, "Accept": NPY})


def test_the_sharp_decoder_decodes_the_same_latents_its_own_way(two_decoders):
    latents = np.random.default_rng(0).normal(size=(5, 64, 1, 1)).astype(np.float32)
    with serving(two_decoders, default_model="tiny") as client:
        described = {m["name"]: m for m in client.get("/v1/models").json()["models"]}
        assert described["tiny"]["decoders"] == ["faithful", "sharp"]
        assert described["other"]["decoders"] == ["faithful"]
        assert "tiny.sharp" not in described
        plain, faithful, sharp = (decode(client, latents, **q) for q in ({}, {"decoder": "faithful"}, {"decoder": "sharp"}))
        assert [r.status_code for r in (plain, faithful, sharp)] == [200, 200, 200]
        assert plain.content == faithful.content != sharp.content
        missing = decode(client, latents, model="other", decoder="sharp")
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_decoder")
        assert "['faithful']" in missing.json()["detail"]
        bogus = decode(client, latents, decoder="crisp")
        assert bogus.status_code == 422 and "decoder" in bogus.text
        enum = next(p for p in client.get("/openapi.json").json()["paths"]["/v1/decode"]["post"]["parameters"]
                    if p["name"] == "decoder")["schema"]["enum"]
        assert enum == ["faithful", "sharp"]


def test_a_decoder_whose_encoder_differs_is_refused(tmp_path):
    base = save_checkpoint(tmp_path / "tiny.safetensors")
    save_sharpened(base, tmp_path / "tiny.sharp.safetensors", encoder_too=True)
    with pytest.raises(Exception, match="encoder weights differ"):
        with serving(tmp_path):
            pass
    with serving(tmp_path, skip_bad_checkpoints=True) as client:
        answer = client.get("/v1/models").json()
        assert answer["models"][0]["decoders"] == ["faithful"]
        assert [s["name"] for s in answer["skipped"]] == ["tiny.sharp"]
        assert "encoder weights differ" in answer["skipped"][0]["reason"]
