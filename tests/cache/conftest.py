"""Checkpoints of the cache tests: one tiny model, and the same model "retrained" (other weights)."""

from __future__ import annotations

from pathlib import Path

import pytest


def _checkpoint(folder: Path, seed: int) -> Path:
    import torch

    import model

    torch.manual_seed(seed)
    folder.mkdir(parents=True)
    model.save_checkpoint(model.build("dcae-t48"), folder / "tiny.safetensors")
    return folder


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> Path:
    """A folder holding ``tiny.safetensors`` (dcae-t48, seed 0)."""
    return _checkpoint(tmp_path_factory.mktemp("cache") / "original", seed=0)


@pytest.fixture(scope="session")
def retrained_checkpoints(tmp_path_factory) -> Path:
    """Another ``tiny.safetensors``: same name and architecture, different weights (seed 1)."""
    return _checkpoint(tmp_path_factory.mktemp("cache") / "retrained", seed=1)
