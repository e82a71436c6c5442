"""Whether this run measures the machine: ``make reliability`` (scripts/reliability_report.py)
sets ``TESSERA_RELIABILITY_OUT``. Tests that measure (shares, latency ratios, RSS, timings)
assert their timed bounds only then; in ``make test`` they assert behaviour: which statuses must
and must not occur."""

from __future__ import annotations

import os


def measuring() -> bool:
    return bool(os.environ.get("TESSERA_RELIABILITY_OUT"))
