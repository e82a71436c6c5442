"""The interface every Tessera network implements: 32x32 RGB tiles in, latents out, and back."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TILE_SIZE, ModelConfig


class TileAutoencoder(nn.Module):
    """Base class of the networks ``tessera.model.build`` returns.

    Attributes:
        spec: preset name or dot-list that rebuilds this network with ``tessera.model.build``.
        config: the frozen config dataclass.
        arch: ``"dcae"`` or ``"baseline"``.
        latent_shape: shape of one tile's latent, e.g. ``(64, 1, 1)`` or ``(128,)``.
    """

    arch: str

    def __init__(self, config: ModelConfig, spec: str) -> None:
        super().__init__()
        self.config = config
        self.spec = spec
        self.latent_shape: tuple[int, ...] = tuple(config.latent_shape)

    @property
    def compression_ratio(self) -> float:
        """Input values per latent value: ``channels*32*32 / prod(latent_shape)`` (3 channels for
        RGB models, 4 for RGBA ones)."""
        return self.config.in_channels * TILE_SIZE * TILE_SIZE / math.prod(self.latent_shape)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: float ``[N, 3, 32, 32]`` in [0, 1] -> latents ``[N, *latent_shape]``."""
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents ``[N, *latent_shape]`` -> tiles ``[N, 3, 32, 32]`` (not clamped)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``decode(encode(x))``."""
        return self.decode(self.encode(x))

    def extra_repr(self) -> str:
        return f"spec={self.spec!r}, latent_shape={self.latent_shape}"
