"""Small checkpoints with random weights, for servers that tests and benchmarks start."""

from __future__ import annotations

from pathlib import Path

TINY = "dcae-t48"  # every block kind, ~390k parameters: milliseconds per call at 32x32


def tiny_rgba() -> str:
    """``TINY`` with 4 channels in and out: an RGBA model."""
    from tessera import model

    return model.PRESETS[TINY].replace("latent_channels=64", "in_channels=4 latent_channels=64")


def save_checkpoint(path: Path, preset: str = TINY, seed: int = 0, metrics: dict | None = None,
                    training: dict | None = None) -> Path:
    """A checkpoint of ``preset`` (a name or a dot-list) with random weights (torch seed
    ``seed``) at ``path``; its training record holds ``metrics`` when given (``/v1/models``
    lists them) and the entries of ``training``."""
    import torch

    from tessera import model

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {**({"metrics": metrics} if metrics is not None else {}), **(training or {})}
    model.save_checkpoint(model.build(preset), path, metadata=record or None)
    return path


def save_sharpened(base: Path, path: Path, encoder_too: bool = False) -> Path:
    """A copy of checkpoint ``base`` whose decoder's output layer (and, with ``encoder_too``, the
    encoder's) moved: a second decoder of its latents, as `tessera sharpen` writes one."""
    import torch

    from tessera import model

    module, info = model.load_checkpoint(base)
    with torch.no_grad():
        for p in module.decoder.conv_out.parameters():
            p.add_(0.5)
        if encoder_too:
            for p in module.encoder.conv_out.parameters():
                p.add_(0.5)
    model.save_checkpoint(module, path, info.get("training"))
    return path

