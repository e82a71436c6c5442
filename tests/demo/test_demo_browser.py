"""The demo page in a real headless chromium, against a real ``tessera serve`` with an API key.

The test types the key, uploads a sheet through the file input, reads the PSNR the page shows
and checks it against the one computed here from ``/v1/encode`` + ``/v1/decode`` of the same
sheet, picks two tiles with mouse clicks, moves the slider with a click and checks the mixed tile
on the canvas: it changed, and it is the decode of (1 - t) z_a + t z_b. The slider decodes with
onnxruntime-web where the build vendored it and the server can export ONNX (``make test``
provides both), else with ``/v1/decode``; the test checks which one the page used. A screenshot
is saved under the test's tmp folder.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil

import httpx
import numpy as np
import pytest
from cdp_client import Chromium
from PIL import Image

from tessera.service.http.demo import vendored
from tessera.service.http.demo_onnx import export_unavailable
from tessera.testing.bodies import NPY, load_npy, npy
from tessera.testing.checkpoints import save_sharpened
from tessera.testing.serve import local_server
from tessera.testing.waiting import wait_until

pytestmark = pytest.mark.slow

KEY = "demo-browser-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROWS, COLS = 3, 4
PICKS = (1, 6)  # tile indices, row-major
ONNX_READY_S = 600.0  # the first export of the decoder, on a busy 2-core machine


def sheet_rgba(seed: int = 3) -> np.ndarray:
    """Random opaque tiles, with a fully transparent band in tile 0 and a transparent tile 11."""
    rng = np.random.default_rng(seed)
    rgba = rng.integers(0, 256, size=(ROWS * 32, COLS * 32, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[:16, :32, 3] = 0
    rgba[64:96, 96:128, 3] = 0
    return rgba


def premultiplied_tiles(rgba: np.ndarray) -> np.ndarray:
    """uint8 [N, 32, 32, 3]: colour times alpha, rounded to nearest, row-major tiles."""
    rgb = (rgba[..., :3].astype(np.uint32) * rgba[..., 3:4] + 127) // 255
    tiles = rgb.reshape(ROWS, 32, COLS, 32, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 32, 32, 3)
    return tiles.astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def post(server, op: str, body: bytes, content_type: str) -> bytes:
    response = httpx.post(f"{server.url}/v1/{op}", content=body, timeout=60,
                          headers={**AUTH, "Content-Type": content_type, "Accept": NPY})
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def server(checkpoint_dir, tmp_path_factory):
    """The suite's tiny model with a second, sharp decoder of its latents."""
    folder = tmp_path_factory.mktemp("demo-checkpoints")
    shutil.copy(checkpoint_dir / "tiny.safetensors", folder / "tiny.safetensors")
    save_sharpened(folder / "tiny.safetensors", folder / "tiny.sharp.safetensors")
    with local_server(folder, tmp_path_factory.mktemp("demo-server") / "serve.log", TESSERA_API_KEYS=KEY) as server:
        yield server


@pytest.mark.timeout(1200)
def test_demo_page_in_chromium(chromium_binary, server, tmp_path):
    rgba = sheet_rgba()
    sheet_path = tmp_path / "sheet.png"
    Image.fromarray(rgba, "RGBA").save(sheet_path)
    latents = load_npy(post(server, "encode", sheet_path.read_bytes(), "image/png"))
    expected_psnr = psnr(premultiplied_tiles(rgba), load_npy(post(server, "decode", npy(latents), NPY)))
    in_page = vendored() is not None and export_unavailable() is None
    if os.environ.get("CI"):  # .ci/run's `make venv` vendors onnxruntime-web and installs the export extra
        assert in_page, f"CI: onnxruntime-web vendored: {vendored() is not None}; export: {export_unavailable() or 'ok'}"
    expected_path = "onnx" if in_page else "server"

    with Chromium(chromium_binary, tmp_path / "profile", tmp_path / "chromium.log") as browser:
        page = browser.new_page()

        def shown(expression: str, what: str, timeout_s: float = 120.0):
            try:
                return wait_until(lambda: page.evaluate(expression), timeout_s, what=what, interval_s=0.1)
            except AssertionError as exc:
                status = page.evaluate("document.getElementById('status').textContent")
                raise AssertionError(f"{exc}; the page says {status!r}; console: {page.console()}") from None

        page.navigate(f"{server.url}/demo")
        # the server needs a key: the page says so, the user types it
        shown("document.getElementById('status').textContent.includes('API key')", "the page asks for the API key")
        page.type_text("#api-key", KEY)
        shown("!document.getElementById('model').disabled", "the models are listed")
        assert page.evaluate("document.getElementById('model').value") == "tiny"

        # the sheet, through the file input
        page.set_files("#file", sheet_path)
        value = shown("document.getElementById('psnr').dataset.value", "the PSNR is shown")
        shown_text = page.evaluate("document.getElementById('psnr').textContent")
        assert math.isfinite(float(value)) and math.isfinite(float(shown_text)), (value, shown_text)
        assert abs(float(shown_text) - expected_psnr) <= 0.05, (shown_text, expected_psnr)
        assert abs(float(value) - expected_psnr) <= 1e-6, (value, expected_psnr)
        assert page.evaluate("document.getElementById('tile-count').textContent") == str(ROWS * COLS)

        # which decoder the slider uses: the page settles on it once the ONNX file is built (or not)
        shown("document.getElementById('decode-path').dataset.state !== 'loading'", "the decoder ONNX settled", ONNX_READY_S)
        path_info = page.evaluate("(() => { const el = document.getElementById('decode-path');"
                                  " return [el.dataset.path, el.dataset.state, el.textContent]; })()")
        assert path_info[0] == expected_path, path_info

        # two tiles by mouse clicks on the original sheet, then the slider
        for index in PICKS:
            row, col = divmod(index, COLS)
            page.click(*page.center_of("#original", (col + 0.5) / COLS, (row + 0.5) / ROWS))
        shown(f"(() => {{ const d = document.getElementById('mix').dataset;"
              f" return d.a === '{PICKS[0]}' && d.b === '{PICKS[1]}' && d.t === '0'; }})()", "the mix at t = 0")
        pixels = "Array.from(document.getElementById('mix').getContext('2d').getImageData(0, 0, 32, 32).data)"
        at_zero = np.array(page.evaluate(pixels), np.uint8).reshape(32, 32, 4)[..., :3]
        page.click(*page.center_of("#mix-t", 0.75, 0.5))
        t = float(shown("(() => { const v = document.getElementById('mix-t').value;"
                        " return v !== '0' && document.getElementById('mix').dataset.t === v && v; })()",
                        "the mix at the slider's new position"))
        assert 0.5 < t < 1.0, t
        moved = np.array(page.evaluate(pixels), np.uint8).reshape(32, 32, 4)[..., :3]
        assert (moved != at_zero).any(), "the canvas did not change when the slider moved"
        assert page.evaluate("document.getElementById('mix').dataset.path") == expected_path

        # the canvas shows the decode of the mixed latents (ONNX in the page: one rounding step apart)
        a, b = latents[PICKS[0]].astype(np.float64), latents[PICKS[1]].astype(np.float64)
        tolerance = 2 if expected_path == "onnx" else 0
        for shown_tile, weight in ((at_zero, 0.0), (moved, t)):
            mixed = ((1 - weight) * a + weight * b).astype(np.float32)[None]
            decoded = load_npy(post(server, "decode", npy(mixed), NPY))[0]
            difference = np.abs(shown_tile.astype(int) - decoded.astype(int)).max()
            assert difference <= tolerance, (weight, difference)

        # the model's sharp decoder is a choice of its own: the round trip then decodes with it
        options = page.evaluate("Array.from(document.getElementById('model').options).map((o) => o.value)")
        assert options == ["tiny", "tiny|sharp"], options
        page.evaluate("(() => { const s = document.getElementById('model'); s.value = 'tiny|sharp';"
                      " s.dispatchEvent(new Event('change')); })()")
        sharp_psnr = psnr(premultiplied_tiles(rgba), load_npy(post(server, "decode?decoder=sharp", npy(latents), NPY)))
        assert abs(sharp_psnr - expected_psnr) > 1e-3  # the two decoders differ
        shown(f"(() => {{ const v = document.getElementById('psnr').dataset.value;"
              f" return v !== undefined && Math.abs(Number(v) - {sharp_psnr!r}) <= 1e-6; }})()", "the sharp decoder's PSNR")
        shown("document.getElementById('decode-path').dataset.state !== 'loading'", "the sharp decoder ONNX settled",
              ONNX_READY_S)
        assert "sharp decoder" in page.evaluate("document.getElementById('decode-path').textContent")

        shot = page.screenshot(tmp_path / "demo.png")
        with Image.open(io.BytesIO(shot.read_bytes())) as image:
            assert image.width >= 1000 and image.height >= 600, image.size

        # the key went in headers, never in a URL; no script broke the page's CSP or threw
        urls = [e["request"]["url"] for e in page.events("Network.requestWillBeSent")]
        assert urls and not [u for u in urls if KEY in u], urls
        keyed = [e["request"] for e in page.events("Network.requestWillBeSent")
                 if "/v1/" in e["request"]["url"] or "/decoder.onnx" in e["request"]["url"]]
        assert "Authorization" not in keyed[0]["headers"]  # the first /v1/models, before the key: 401
        assert all(r["headers"].get("Authorization") == f"Bearer {KEY}" for r in keyed[1:]), \
            json.dumps([(r["url"], r["headers"]) for r in keyed])[:2000]
        console = page.console()
        assert not [line for line in console if "Content Security Policy" in line or line.startswith("exception")], console
