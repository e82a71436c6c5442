"""Reading and writing ``bench/results/<stage>.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path

from bench.machine import ROOT

RESULTS = ROOT / "bench" / "results"


def save(path: Path, data: dict) -> Path:
    """Write ``data`` as JSON, atomically (a stage killed mid-write leaves the last whole file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)
    return path


def load(folder: Path, stage: str) -> dict | None:
    """The results of one stage, or None when it has not been run."""
    path = folder / f"{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None
