"""``build(spec)``: a network from a preset name or a dot-list."""

from __future__ import annotations

import contextlib

import torch

from .autoencoder import TileAutoencoder
from .baseline import BaselineAE
from .config import BaselineConfig, DCAEConfig, ModelConfig
from .presets import PRESETS, parse_spec
from .dcae import DCAE


def build_from_config(config: ModelConfig, spec: str | None = None) -> TileAutoencoder:
    """The network for a config dataclass; ``spec`` defaults to the config's dot-list."""
    if isinstance(config, DCAEConfig):
        return DCAE(config, spec)
    if isinstance(config, BaselineConfig):
        return BaselineAE(config, spec)
    raise TypeError(f"expected a DCAEConfig or BaselineConfig, got {type(config).__name__}")


def build(spec: str, device: torch.device | str | None = None) -> TileAutoencoder:
    """Build a freshly initialised network.

    Args:
        spec: a preset name from ``model.PRESETS`` (``"dcae-s48"``, ``"baseline"``, ...) or a
            dot-list such as ``"latent_channels=64 encoder.width_list=[64,128,256,256,512,512] ..."``.
        device: where to allocate the parameters (``"meta"`` builds without memory, for counting).

    Returns:
        A :class:`TileAutoencoder`; its ``spec`` is the preset name, or the canonical dot-list.

    Raises:
        ConfigError (a ``ValueError``): unknown preset, key, block type, norm or activation, or
            inconsistent widths.
    """
    _, config = parse_spec(spec)
    name = spec.strip()
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return build_from_config(config, name if name in PRESETS else None)

