"""Fixtures of the reliability tests: tiny checkpoints and a record of what the tests measured.

The helpers of the service tests (``service_helpers``: apps, bodies, a real ``tessera serve``)
are shared, not copied: their folder is put on the import path here.

With ``TESSERA_RELIABILITY_OUT=path.json`` the measurements (cases fuzzed, failed requests during
a Redis kill, overload shares, RSS, requests lost at SIGTERM) are written there at the end of the
session; ``scripts/reliability_report.py`` turns them into ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from reliability_models import save_tiny  # noqa: E402  (after the path is set up)


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A folder holding one tiny checkpoint, ``tiny.safetensors``."""
    folder = tmp_path_factory.mktemp("reliability-checkpoints")
    save_tiny(folder / "tiny.safetensors")
    return folder


@pytest.fixture(scope="session")
def measurements():
    """A dict the tests put their measurements in; saved when TESSERA_RELIABILITY_OUT is set."""
    found: dict[str, dict] = {}
    yield found
    out = os.environ.get("TESSERA_RELIABILITY_OUT")
    if out and found:
        path = Path(out)
        previous = json.loads(path.read_text()) if path.exists() else {}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({**previous, **found}, indent=1, sort_keys=True) + "\n")
