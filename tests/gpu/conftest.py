"""The CUDA tests (``-m gpu``). Under ``make gpu-check`` a test that would start after the
tests stage's time budget is skipped, so pytest ends in time and still writes its report."""

from __future__ import annotations

import os
import time

import pytest

DEADLINE_ENV = "TESSERA_GPU_TESTS_DEADLINE"  # wall-clock seconds, set by bench.gpu_check


def pytest_runtest_setup(item: pytest.Item) -> None:
    deadline = os.environ.get(DEADLINE_ENV)
    if deadline and time.time() > float(deadline):
        pytest.skip("gpu-check: the tests stage's time budget was spent before this test")
