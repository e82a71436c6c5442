"""Fixtures of the service tests: a tiny checkpoint and a shared app on it."""

from __future__ import annotations

from pathlib import Path

import pytest

from service_helpers import serving


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A folder with one tiny DC-AE checkpoint, ``tiny.safetensors`` (random weights, seed 0)."""
    import torch

    import model

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    module = model.build("dcae-t48")
    model.save_checkpoint(module, folder / "tiny.safetensors", metadata={"metrics": {"val_psnr": 12.5}})
    return folder


@pytest.fixture(scope="module")
def client(checkpoint_dir):
    """A shared app with default settings (in-process cache on)."""
    with serving(checkpoint_dir) as client:
        yield client

