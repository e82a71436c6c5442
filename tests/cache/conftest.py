"""Checkpoints of the cache tests: one tiny model, and the same model "retrained" (other weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tessera.testing.checkpoints import save_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A folder holding ``tiny.safetensors`` (dcae-t48, seed 0)."""
    return save_checkpoint(tmp_path_factory.mktemp("cache") / "original" / "tiny.safetensors", seed=0).parent


@pytest.fixture(scope="session")
def retrained_checkpoints(tmp_path_factory) -> Path:
    """Another ``tiny.safetensors``: same name and architecture, different weights (seed 1)."""
    return save_checkpoint(tmp_path_factory.mktemp("cache") / "retrained" / "tiny.safetensors", seed=1).parent
