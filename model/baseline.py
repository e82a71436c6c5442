"""The original experiment's baseline: a stacked symmetric CNN autoencoder with a linear bottleneck.

Encoder: valid 5x5 convolutions 3->24->32->48, ReLU after each (the last too), then
Linear(48*20*20, 128). Decoder: Linear(128, 48*20*20), reshape, transposed 5x5 convolutions
48->32->24->3 with ReLU between them and none at the end. 5,053,491 parameters, ratio 24.
"""

from __future__ import annotations

import torch
from torch import nn

from .autoencoder import TileAutoencoder
from .config import BaselineConfig


class BaselineEncoder(nn.Module):
    """``(B, 3, 32, 32) -> (B, latent_dim)``."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        chans = (cfg.in_channels, *cfg.channels)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, cfg.kernel_size), nn.ReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = nn.Linear(chans[-1] * cfg.feature_size ** 2, cfg.latent_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))  # (B, 48, 20, 20) -> (B, 19200) -> (B, 128)


class BaselineDecoder(nn.Module):
    """``(B, latent_dim) -> (B, 3, 32, 32)``; mirrors :class:`BaselineEncoder`."""

    def __init__(self, cfg: BaselineConfig) -> None:
        super().__init__()
        chans = (cfg.in_channels, *cfg.channels)[::-1]  # 48, 32, 24, 3
        self.feature_shape = (chans[0], cfg.feature_size, cfg.feature_size)
        self.linear = nn.Linear(cfg.latent_dim, chans[0] * cfg.feature_size ** 2)
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, cfg.kernel_size), nn.ReLU()]
        self.convs = nn.Sequential(*layers[:-1])  # no activation after the last layer

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.linear(z).unflatten(1, self.feature_shape)  # (B, 48, 20, 20)
        return self.convs(x)  # (B, 3, 32, 32)


class BaselineAE(TileAutoencoder):
    """The original experiment's baseline CNN autoencoder; ``z`` is ``[N, latent_dim]``."""

    arch = "baseline"

    def __init__(self, config: BaselineConfig, spec: str | None = None) -> None:
        super().__init__(config, spec if spec is not None else config.to_dotlist())
        self.encoder = BaselineEncoder(config)
        self.decoder = BaselineDecoder(config)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
