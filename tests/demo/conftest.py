"""Fixtures of the demo page tests: Debian's chromium for the browser test."""

from __future__ import annotations

import pytest

from tests.conftest import require_binary


@pytest.fixture(scope="session")
def chromium_binary() -> str:
    """Path of Debian's ``chromium`` (skips without it, except under CI, where .ci/run installs it)."""
    return require_binary("chromium", "chromium")
