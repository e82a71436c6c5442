"""``bench.refine``: the encode-effort curve (PSNR against CPU per tile) that docs/encode-effort.md shows."""

from __future__ import annotations

import json

from bench import refine
from bench.gpu_check import dry_data
from tessera.testing.checkpoints import save_checkpoint


def test_the_curve_climbs_with_steps_and_costs_cpu(tmp_path):
    checkpoint = save_checkpoint(tmp_path / "tiny.safetensors")
    data = dry_data(tmp_path / "work")
    out, png = tmp_path / "refine.json", tmp_path / "refine.png"
    assert refine.main(["--checkpoint", str(checkpoint), "--data", str(data), "--steps", "0,3,10", "--lr", "0.2",
                        "--out", str(out), "--plot", str(png)]) == 0
    (result,) = json.loads(out.read_text())["results"]
    points = result["points"]
    assert [p["steps"] for p in points] == [0, 3, 10]
    assert points[0]["psnr"] < points[1]["psnr"] < points[2]["psnr"]
    assert 0 < points[0]["cpu_ms_per_tile"] < points[1]["cpu_ms_per_tile"] < points[2]["cpu_ms_per_tile"]
    assert png.stat().st_size > 0
