"""Fixtures of the service tests: a shared app on the suite's tiny checkpoint."""

from __future__ import annotations

import pytest

from tessera.testing.apps import serving


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    """A shared app with default settings (in-process cache on)."""
    with serving(checkpoint_dir) as client:
        yield client
