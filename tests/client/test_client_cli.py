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
    assert_one_line_error(tessera("decode", str(tmp_path / "ok.png"), env=server.env), 3, "a PNG image, not latents")
    assert "pickle" not in tessera("decode", str(tmp_path / "ok.png"), env=server.env).stderr
    assert_one_line_error(tessera("decode", str(tmp_path / "notes.png"), env=server.env), 3, "not a .npz of latents")
    assert_one_line_error(tessera("models", "--url", dead_url, env=server.env), 4, "cannot reach the Tessera server")
    assert_one_line_error(tessera("encode", str(tmp_path / "ok.png"), "--model", "nope", env=server.env), 1, "nope")
    assert_one_line_error(tessera("encode", str(tmp_path / "ok.png"), "--api-key", "wrong", env=server.env), 1, "TESSERA_API_KEY")


def write_atlas(path: Path, tiles: np.ndarray, columns: int, margin: int, spacing: int, key=(255, 0, 255)) -> None:
    """An atlas as Tiled expects one: tiles ``spacing`` apart, ``margin`` around, the gaps in the
    colour key (which Tiled's ``trans`` makes transparent)."""
    rows = -(-len(tiles) // columns)
    step = 32 + spacing
    sheet = np.zeros((2 * margin + rows * step - spacing, 2 * margin + columns * step - spacing, 3), np.uint8)
    sheet[...] = key
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        sheet[margin + r * step : margin + r * step + 32, margin + c * step : margin + c * step + 32] = tile
    Image.fromarray(sheet).save(path)


def test_a_tiled_tsx_round_trips_with_its_margin_spacing_and_colour_key(server, tmp_path):
    tiles = np.random.default_rng(3).integers(0, 200, size=(7, 32, 32, 3), dtype=np.uint8)  # never the key colour
    tiles[0, :4, :4] = (255, 0, 255)  # a keyed corner: transparent, so black once alpha is multiplied in
    write_atlas(tmp_path / "level.png", tiles, columns=3, margin=2, spacing=1)
    (tmp_path / "level.tsx").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<tileset version="1.10" name="level" tilewidth="32" tileheight="32" '
        'spacing="1" margin="2" tilecount="7" columns="3">\n <image source="level.png" trans="ff00ff" width="102" '
        'height="102"/>\n</tileset>\n')
    done = tessera("encode", str(tmp_path / "level.tsx"), "-o", str(tmp_path / "level.npz"), "-q", env=server.env)
    assert done.returncode == 0, done.stderr
    assert "7 tiles (3x3, margin 2, spacing 1)" in done.stdout
    with np.load(tmp_path / "level.npz") as data:
        assert len(data["latents"]) == 7 and int(data["margin"]) == 2 and int(data["spacing"]) == 1

    # the latents are those of the tiles themselves, the keyed corner black
    expected = tiles.copy()
    expected[0, :4, :4] = 0
    from tessera.client import Client

    with Client(server.url, api_key=server.api_key) as client:
        reference = client.encode(expected).latents
    with np.load(tmp_path / "level.npz") as data:
        np.testing.assert_allclose(data["latents"], reference, atol=1e-5)

    done = tessera("decode", str(tmp_path / "level.npz"), "-o", str(tmp_path / "out.png"), "--tsx", "-q", env=server.env)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "out.png").size == (102, 102)  # the same layout: margin 2, spacing 1, 3 columns
    from tessera.tiles.tsx import read_tsx

    tileset = read_tsx(tmp_path / "out.tsx")
    assert (tileset.margin, tileset.spacing, tileset.columns, tileset.count) == (2, 1, 3, 7)
    assert tileset.image == (tmp_path / "out.png").resolve()


def test_a_tsx_with_other_tile_sizes_is_refused_in_one_line(server, tmp_path):
    Image.new("RGB", (64, 64)).save(tmp_path / "small.png")
    (tmp_path / "small.tsx").write_text('<tileset tilewidth="16" tileheight="16"><image source="small.png"/></tileset>')
    assert_one_line_error(tessera("encode", str(tmp_path / "small.tsx"), env=server.env), 3, "16x16")
