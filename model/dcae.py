"""DC-AE encoder, decoder and autoencoder (efficientvit ``dc_ae.py``).

Stage ``i`` runs at ``1/2^i`` of the tile's side (stage 0 at full size). With ``depth_list[0] == 0``
stage 0 is empty and ``conv_in`` down-samples straight to ``width_list[1]``. A 6-stage network
takes a 32x32 tile to a ``[latent_channels, 1, 1]`` latent.
"""

from __future__ import annotations

import torch
from torch import nn

from .autoencoder import TileAutoencoder
from .blocks import (DownsampleLayer, UpsampleLayer, build_act, build_block, build_norm, channel_average,
                     channel_duplicate, conv3x3)
from .config import DCAEConfig, DecoderConfig, EncoderConfig


class Encoder(nn.Module):
    """``(B, 3, 32, 32) -> (B, latent_channels, 32/2^(stages-1), 32/2^(stages-1))``."""

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        widths, depths, num_stages = cfg.width_list, cfg.depth_list, len(cfg.width_list)
        if depths[0] > 0:
            self.conv_in = conv3x3(cfg.in_channels, widths[0])
        else:
            self.conv_in = DownsampleLayer(cfg.in_channels, widths[1], cfg.downsample_block_type, shortcut=None)

        down_blocks = []
        for i, (width, depth, block_type) in enumerate(zip(widths, depths, cfg.block_types)):
            stage = [build_block(block_type, width, cfg.norm, cfg.act) for _ in range(depth)]
            if i < num_stages - 1 and depth > 0:
                stage.append(DownsampleLayer(width, widths[i + 1], cfg.downsample_block_type,
                                             shortcut=cfg.downsample_shortcut))
            down_blocks.append(nn.Sequential(*stage))
        self.down_blocks = nn.ModuleList(down_blocks)

        self.norm_out = build_norm(cfg.out_norm, widths[-1])
        self.act_out = build_act(cfg.out_act)
        self.conv_out = conv3x3(widths[-1], cfg.latent_channels)
        self.out_shortcut = cfg.out_shortcut is not None
        self.latent_channels = cfg.latent_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for down_block in self.down_blocks:
            x = down_block(x)
        z = self.conv_out(self.act_out(self.norm_out(x)))  # (B, latent, h, w)
        if self.out_shortcut:
            z = z + channel_average(x, self.latent_channels)
        return z


class Decoder(nn.Module):
    """``(B, latent_channels, h, w) -> (B, 3, 32, 32)``; mirrors :class:`Encoder` (``up_blocks[i]`` is stage i)."""

    def __init__(self, cfg: DecoderConfig) -> None:
        super().__init__()
        widths, depths, num_stages = cfg.width_list, cfg.depth_list, len(cfg.width_list)
        self.conv_in = conv3x3(cfg.latent_channels, widths[-1])
        self.in_shortcut = cfg.in_shortcut is not None
        self.width_in = widths[-1]

        up_blocks = []
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stage = []
            if i < num_stages - 1 and depth > 0:
                stage.append(UpsampleLayer(widths[i + 1], width, cfg.upsample_block_type,
                                           shortcut=cfg.upsample_shortcut))
            stage += [build_block(cfg.block_types[i], width, cfg.norms[i], cfg.acts[i]) for _ in range(depth)]
            up_blocks.append(nn.Sequential(*stage))
        self.up_blocks = nn.ModuleList(up_blocks)

        width_out = widths[0] if depths[0] > 0 else widths[1]
        self.norm_out = build_norm(cfg.out_norm, width_out)
        self.act_out = build_act(cfg.out_act)
        if depths[0] > 0:
            self.conv_out = conv3x3(width_out, cfg.in_channels)
        else:
            self.conv_out = UpsampleLayer(width_out, cfg.in_channels, cfg.upsample_block_type, shortcut=None)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(z)  # (B, width[-1], h, w)
        if self.in_shortcut:
            x = x + channel_duplicate(z, self.width_in)
        for up_block in reversed(self.up_blocks):
            x = up_block(x)
        return self.conv_out(self.act_out(self.norm_out(x)))  # (B, 3, 32, 32)


class DCAE(TileAutoencoder):
    """Deep Compression Autoencoder for 32x32 tiles; ``z`` is ``[N, C, h, w]``."""

    arch = "dcae"

    def __init__(self, config: DCAEConfig, spec: str | None = None) -> None:
        super().__init__(config, spec if spec is not None else config.to_dotlist())
        self.encoder = Encoder(config.encoder)
        self.decoder = Decoder(config.decoder)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)
