"""``bench.train_speed``: training inputs per CPU-second of layouts and execution settings."""

from __future__ import annotations

import json

from bench import train_speed


def test_every_point_is_measured_and_saved(tmp_path):
    out = tmp_path / "speed.json"
    assert train_speed.main(["--models", "dcae-t48", "--modes", "eager,channels-last", "--batches", "4,8",
                             "--out", str(out)]) == 0
    points = json.loads(out.read_text())["points"]
    assert [(p["mode"], p["batch"]) for p in points] == [("eager", 4), ("eager", 8), ("channels-last", 4),
                                                         ("channels-last", 8)]
    assert all(p["inputs_per_cpu_s"] > 0 and p["model"] == "dcae-t48" for p in points)
