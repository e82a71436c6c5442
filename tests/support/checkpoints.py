"""Small checkpoints with random weights, for servers that tests and benchmarks start."""

from __future__ import annotations

from pathlib import Path

TINY = "dcae-t48"  # every block kind, ~390k parameters: milliseconds per call at 32x32


def save_checkpoint(path: Path, preset: str = TINY, seed: int = 0, metrics: dict | None = None) -> Path:
    """A checkpoint of ``preset`` with random weights (torch seed ``seed``) at ``path``; its
    training metadata holds ``metrics`` when given (``/v1/models`` lists them)."""
    import torch

    import model

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save_checkpoint(model.build(preset), path, metadata={"metrics": metrics} if metrics is not None else None)
    return path
