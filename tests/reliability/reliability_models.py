"""Checkpoints for the reliability tests."""

from __future__ import annotations

from pathlib import Path


def save_tiny(path: Path, seed: int = 0) -> Path:
    """A tiny DC-AE checkpoint (dcae-t48, random weights) at ``path``."""
    import torch

    import model

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_checkpoint(model.build("dcae-t48"), path, metadata={"metrics": {"val_psnr": 12.5}})
    return path
