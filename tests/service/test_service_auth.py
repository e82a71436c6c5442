"""API keys: /v1/* needs a bearer key when TESSERA_API_KEYS is set; health stays open."""

from __future__ import annotations

import pytest

from tessera.service.http.auth import KeyCheck, load_keys
from tessera.service.errors import Unauthorized
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, npy, random_tiles


def test_load_keys_from_value_and_file(tmp_path):
    assert load_keys(None) == () and load_keys("  ") == ()
    assert load_keys("a, b ,,c") == ("a", "b", "c")
    file = tmp_path / "keys"
    file.write_text("# operators\none\n\n  two  \n")
    assert load_keys(f"@{file}") == ("one", "two")
    with pytest.raises(ValueError, match="cannot be read"):
        load_keys(f"@{tmp_path / 'missing'}")
    file.write_text("# nothing\n")
    with pytest.raises(ValueError, match="holds no key"):
        load_keys(f"@{file}")


def test_key_check():
    check = KeyCheck(("k1", "k2"))
    check.check("Bearer k2")
    check.check("bearer  k1 ")
    for header in (None, "", "Bearer", "Basic k1", "Bearer k3", "k1"):
        with pytest.raises(Unauthorized):
            check.check(header)
    KeyCheck(()).check(None)  # no keys: everything passes


def test_keys_guard_v1_but_not_health(checkpoint_dir):
    body = npy(random_tiles(1))
    with serving(checkpoint_dir, api_keys="secret-1,secret-2") as client:
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = client.post("/v1/encode", content=body, headers={"Content-Type": NPY, **headers})
            assert r.status_code == 401 and r.json()["code"] == "unauthorized", r.text
            assert r.headers["WWW-Authenticate"] == "Bearer"
            assert client.get("/v1/models", headers=headers).status_code == 401
            assert client.post("/v1/decode?model=nope", content=b"", headers=headers).status_code == 401  # before 404
        ok = client.post("/v1/encode", content=body, headers={"Content-Type": NPY, "Authorization": "Bearer secret-2"})
        assert ok.status_code == 200
        assert client.get("/v1/models", headers={"Authorization": "Bearer secret-1"}).status_code == 200
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
        assert client.get("/metrics").status_code == 200  # public by default
        # the API description names the models and limits: behind the key too, unless made public
        assert client.get("/openapi.json").status_code == 401 and client.get("/docs").status_code == 401
        schemes = client.get("/openapi.json", headers={"Authorization": "Bearer secret-1"}).json()["components"]
        assert any(s["scheme"] == "bearer" for s in schemes["securitySchemes"].values())


def test_the_api_description_can_be_public(checkpoint_dir):
    with serving(checkpoint_dir, api_keys="secret", openapi_public=True) as client:
        assert client.get("/openapi.json").status_code == 200 and client.get("/docs").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_metrics_can_be_protected(checkpoint_dir):
    with serving(checkpoint_dir, api_keys="m-key", metrics_public=False) as client:
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"Authorization": "Bearer m-key"}).status_code == 200
