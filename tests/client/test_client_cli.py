"""`tessera encode|decode|roundtrip|models` end to end, through the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

TESSERA = Path(sys.executable).with_name("tessera")


def tessera(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(TESSERA), *args], env=env, capture_output=True, text=True, timeout=120)


def assert_one_line_error(done: subprocess.CompletedProcess, code: int, text: str) -> None:
    assert done.returncode == code, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tessera: error: ") and text in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_encode_then_decode_rebuilds_the_sheet_in_its_grid(server, make_sheet, tmp_path):
    sheet = make_sheet(3, 5, seed=10).convert("RGB")  # 15 tiles, one request
    sheet.save(tmp_path / "sheet.png")
    done = tessera("encode", str(tmp_path / "sheet.png"), "-o", str(tmp_path / "sheet.npz"), "-q", env=server.env)
    assert done.returncode == 0, done.stderr
    assert "15 tiles (3x5)" in done.stdout and "dcae-t48" in done.stdout
    with np.load(tmp_path / "sheet.npz") as data:
        assert data["latents"].shape == (15, 64, 1, 1) and data["grid"].tolist() == [3, 5]
        assert str(data["model"]) == "dcae-t48" and int(data["tile_size"]) == 32

    done = tessera("decode", str(tmp_path / "sheet.npz"), "-o", str(tmp_path / "back.png"), "-q", env=server.env)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "back.png").size == sheet.size


def test_roundtrip_prints_quality_and_compression_and_writes_the_comparison(server, make_sheet, tmp_path):
    make_sheet(5, 8, seed=11).save(tmp_path / "big.png")  # 40 tiles: chunked
    out = tmp_path / "compare.png"
    done = tessera("roundtrip", str(tmp_path / "big.png"), "-o", str(out), "--url", server.url, env=server.env)
    assert done.returncode == 0, done.stderr
    assert "40 tiles (5x8), model dcae-t48" in done.stdout
    assert "PSNR" in done.stdout and "L1 " in done.stdout and "compression 48x" in done.stdout
    assert Image.open(out).size == (2 * 8 * 32 + 8, 5 * 32)


def test_models_prints_a_table(server):
    done = tessera("models", env=server.env)  # address and key from TESSERA_URL / TESSERA_API_KEY
    assert done.returncode == 0, done.stderr
    header, first = done.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "ARCH", "PARAMS"] and first.startswith("dcae-t48 *")
    assert f"{server.max_tiles_per_request} tiles" in done.stdout


def test_friendly_one_line_errors(server, dead_url, tmp_path):
    (tmp_path / "notes.png").write_text("not a picture")
    Image.new("RGB", (64, 50)).save(tmp_path / "odd.png")
    Image.new("RGB", (64, 64)).save(tmp_path / "ok.png")

    assert_one_line_error(tessera("encode", str(tmp_path / "notes.png"), env=server.env), 3, "not an image")
    assert_one_line_error(tessera("roundtrip", str(tmp_path / "odd.png"), env=server.env), 3, "multiples of 32")
    assert_one_line_error(tessera("encode", str(tmp_path / "missing.png"), env=server.env), 3, "no such file")
    assert_one_line_error(tessera("decode", str(tmp_path / "ok.png"), env=server.env), 3, "not a .npz of latents")
    assert_one_line_error(tessera("models", "--url", dead_url, env=server.env), 4, "cannot reach the Tessera server")
    assert_one_line_error(tessera("encode", str(tmp_path / "ok.png"), "--model", "nope", env=server.env), 1, "nope")
    assert_one_line_error(tessera("encode", str(tmp_path / "ok.png"), "--api-key", "wrong", env=server.env), 1, "TESSERA_API_KEY")
