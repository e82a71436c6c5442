"""Tessera's networks: DC-AE and the original experiment's baseline CNN autoencoder, their presets and checkpoints."""

from .autoencoder import TileAutoencoder
from .build import build, build_from_config
from .checkpoint import CheckpointError, load_checkpoint, read_header, save_checkpoint
from .config import BaselineConfig, ConfigError, DCAEConfig, DecoderConfig, EncoderConfig
from .presets import PRESETS

__all__ = [
    "PRESETS",
    "BaselineConfig",
    "CheckpointError",
    "ConfigError",
    "DCAEConfig",
    "DecoderConfig",
    "EncoderConfig",
    "TileAutoencoder",
    "build",
    "build_from_config",
    "load_checkpoint",
    "read_header",
    "save_checkpoint",
]
