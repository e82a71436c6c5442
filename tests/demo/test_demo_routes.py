"""The demo page's routes in-process: the page and its files, TESSERA_DEMO, and the decoder ONNX
(503 while it is exported, then a file onnxruntime loads; 404 for unknown models and without
the export extra)."""

from __future__ import annotations

import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from tessera.service.http import demo as demo_module
from tessera.service.http.demo import PAGE, vendored
from tessera.service.http.demo_onnx import DecoderFiles, ExportFailed, export_unavailable
from tessera.testing.apps import serving
from tessera.testing.bodies import NPY, load_npy, npy
from tessera.testing.waiting import wait_until

EXPORT_S = 600.0  # the export of the tiny decoder (~10 s), on a busy 2-core machine


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    with serving(checkpoint_dir) as client:
        yield client


class Scripts(HTMLParser):
    """The page's script tags and any inline event handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict] = []
        self.handlers: list[str] = []
        self._in_script = False
        self.inline = ""

    def handle_starttag(self, tag, attrs):
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if tag == "script":
            self.scripts.append(dict(attrs))
            self._in_script = True

    def handle_endtag(self, tag):
        self._in_script = self._in_script and tag != "script"

    def handle_data(self, data):
        if self._in_script:
            self.inline += data.strip()


def test_page_and_assets_are_static_files_under_a_csp(client):
    page = client.get("/demo")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self' 'wasm-unsafe-eval'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    parsed = Scripts()
    parsed.feed(page.text)
    assert parsed.scripts and all("src" in s for s in parsed.scripts) and not parsed.inline and not parsed.handlers
    for name, kind in (("demo.js", "text/javascript"), ("demo.css", "text/css")):
        response = client.get(f"/demo/assets/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind), name
        assert response.content == (PAGE / name).read_bytes()
        assert response.headers["content-security-policy"] == csp
    for path in ("/demo/assets/index.html", "/demo/assets/..%2Fdemo.py", "/demo/vendor/onnxruntime-web/manifest.json.bak"):
        response = client.get(path)
        assert response.status_code == 404 and response.json()["code"] == "not_found", path


def test_config_says_what_the_page_can_use(client):
    config = client.get("/demo/config.json").json()
    manifest = vendored()
    if manifest is None:
        assert config["onnxruntime_web"] is None and "vendor" in config["onnxruntime_web_missing"]
    else:
        assert config["onnxruntime_web"] == {"version": manifest["version"], "script": "ort.wasm.min.js"}
    assert config["onnx_export_missing"] == export_unavailable()


def test_vendored_files_are_served_with_their_types(client):
    manifest = vendored()
    if manifest is None:
        pytest.skip("onnxruntime-web is not vendored: python3 scripts/vendor_onnxruntime_web.py (make venv runs it)")
    types = {".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm", ".json": "application/json"}
    for name, entry in manifest["files"].items():
        response = client.get(f"/demo/vendor/onnxruntime-web/{name}")
        assert response.status_code == 200, name
        assert response.headers["content-type"].startswith(types[Path(name).suffix]), name
        assert len(response.content) == entry["size"], name
    assert client.get("/demo/vendor/onnxruntime-web/ort.all.min.js").status_code == 404


def test_demo_off_is_404(checkpoint_dir):
    with serving(checkpoint_dir, demo=False) as client:
        for path in ("/demo", "/demo/config.json", "/demo/assets/demo.js", "/demo/models/tiny/decoder.onnx"):
            response = client.get(path)
            assert response.status_code == 404, path
            assert "TESSERA_DEMO=false" in response.json()["detail"], path
        assert client.get("/v1/models").status_code == 200


def test_decoder_of_an_unknown_model_is_404(client):
    response = client.get("/demo/models/nope/decoder.onnx")
    assert response.status_code == 404
    assert response.json()["code"] == "unknown_model" and "tiny" in response.json()["detail"]


def test_decoder_follows_the_key_rule(checkpoint_dir):
    with serving(checkpoint_dir, api_keys="demo-key") as client:
        assert client.get("/demo").status_code == 200  # the page itself is public
        assert client.get("/demo/models/nope/decoder.onnx").status_code == 401
        keyed = client.get("/demo/models/nope/decoder.onnx", headers={"Authorization": "Bearer demo-key"})
        assert keyed.status_code == 404 and keyed.json()["code"] == "unknown_model"


def test_decoder_without_the_export_extra_is_404(client, monkeypatch):
    monkeypatch.setattr("tessera.service.http.demo_onnx.EXTRA_MODULES", ("onnx", "tessera_no_such_module"))
    reason = export_unavailable()
    assert "tessera_no_such_module not installed" in reason and "tessera[export]" in reason
    monkeypatch.setattr(demo_module, "export_unavailable", lambda: reason)
    response = client.get("/demo/models/tiny/decoder.onnx")
    assert response.status_code == 404
    assert response.json() == {"detail": reason, "code": "onnx_unavailable"}
    assert client.get("/demo/config.json").json()["onnx_export_missing"] == reason


def test_decoder_is_503_while_exported_then_a_loadable_onnx(client):
    pytest.importorskip("onnx", reason="needs the export extra (pip install -e '.[export]')")
    ort = pytest.importorskip("onnxruntime", reason="needs the export extra (pip install -e '.[export]')")
    url = "/demo/models/tiny/decoder.onnx"
    first = client.get(url)
    assert first.status_code == 503, first.text
    assert first.json()["code"] == "building" and int(first.headers["retry-after"]) >= 1
    answer = wait_until(lambda: (r := client.get(url)).status_code != 503 and r, EXPORT_S, what="the decoder ONNX is built")
    assert answer.status_code == 200, answer.text
    served = client.app.state.tessera.registry.get("tiny")
    assert answer.headers["etag"] == f'"{served.key}"'
    assert client.get(url, headers={"If-None-Match": answer.headers["etag"]}).status_code == 304
    assert client.get(url).content == answer.content  # kept in memory: no second export

    session = ort.InferenceSession(answer.content, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert meta["tessera_part"] == "decoder" and meta["weights_sha256"] == served.key
    assert [i.name for i in session.get_inputs()] == ["latents"] and [o.name for o in session.get_outputs()] == ["tiles"]
    latents = np.random.default_rng(0).standard_normal((5, *served.latent_shape)).astype(np.float32)
    tiles = session.run(None, {"latents": latents})[0]
    assert tiles.shape == (5, 3, 32, 32) and tiles.dtype == np.float32 and 0 <= tiles.min() and tiles.max() <= 1
    by_server = load_npy(client.post("/v1/decode", content=npy(latents), headers={"Content-Type": NPY, "Accept": NPY}).content)
    by_onnx = np.round(tiles.transpose(0, 2, 3, 1) * 255).astype(int)
    assert np.abs(by_onnx - by_server.astype(int)).max() <= 1


def test_a_failed_export_is_reported_not_retried_at_once(tmp_path):
    files = DecoderFiles()
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a checkpoint")
    assert files.get(bogus, "0" * 64) is None  # the build starts

    def failed() -> str | None:
        try:
            files.get(bogus, "0" * 64)
        except ExportFailed as exc:
            return str(exc)
        return None

    message = wait_until(failed, EXPORT_S, what="the export of a bogus checkpoint fails")
    assert re.search(r"the export of bogus\.safetensors failed: .*bogus\.safetensors", message), message


def test_the_export_child_exits_with_the_server(checkpoint_dir, tmp_path):
    """Its stdin is a pipe from the server: once that closes, the child exits, export unfinished."""
    out = tmp_path / "tiny.decoder.onnx"
    child = subprocess.Popen([sys.executable, "-m", "tessera.service.http.demo_onnx", str(checkpoint_dir / "tiny.safetensors"),
                              str(out), "0" * 64], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    child.stdin.close()
    assert child.wait(timeout=120) == 1
    assert not out.exists()


def test_the_sharp_decoder_has_its_own_onnx_file(tmp_path):
    ort = pytest.importorskip("onnxruntime", reason="needs the export extra (pip install -e '.[export]')")
    pytest.importorskip("onnx", reason="needs the export extra (pip install -e '.[export]')")
    from tessera.testing.checkpoints import save_checkpoint, save_sharpened

    save_sharpened(save_checkpoint(tmp_path / "tiny.safetensors"), tmp_path / "tiny.sharp.safetensors")
    save_checkpoint(tmp_path / "plain.safetensors", seed=1)
    with serving(tmp_path, default_model="tiny") as client:
        served = client.app.state.tessera.registry.get("tiny")

        def built(url: str):
            return wait_until(lambda: (r := client.get(url)).status_code != 503 and r, EXPORT_S, what=f"{url} is built")

        faithful, sharp = built("/demo/models/tiny/decoder.onnx"), built("/demo/models/tiny/decoder.onnx?decoder=sharp")
        assert faithful.status_code == sharp.status_code == 200
        assert sharp.headers["etag"] == f'"{served.variants["sharp"].key}"' != faithful.headers["etag"]
        session = ort.InferenceSession(sharp.content, providers=["CPUExecutionProvider"])
        latents = np.random.default_rng(0).standard_normal((3, *served.latent_shape)).astype(np.float32)
        by_onnx = np.round(session.run(None, {"latents": latents})[0].transpose(0, 2, 3, 1) * 255).astype(int)
        by_server = load_npy(client.post("/v1/decode?decoder=sharp", content=npy(latents),
                                         headers={"Content-Type": NPY, "Accept": NPY}).content)
        assert np.abs(by_onnx - by_server.astype(int)).max() <= 1
        missing = client.get("/demo/models/plain/decoder.onnx?decoder=sharp")
        assert (missing.status_code, missing.json()["code"]) == (404, "unknown_decoder")
