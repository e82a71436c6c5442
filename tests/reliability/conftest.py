"""Fixtures of the reliability tests: a record of what the tests measured.

With ``TESSERA_RELIABILITY_OUT=path.json`` (``make reliability``) the measurements (cases fuzzed,
failed requests during a Redis kill, overload shares, RSS, requests lost at SIGTERM) are written
there at the end of the session, and the tests assert their timed bounds
(``tessera.testing.measuring``); ``scripts/reliability_report.py`` turns the file into
``docs/reliability.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest


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
