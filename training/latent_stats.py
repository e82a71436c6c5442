"""Statistics of a model's latents over its training corpus, for latent-diffusion users.

A diffusion model trains best on latents of about unit variance; diffusers scales them with
``scaling_factor`` (and some autoencoders shift them with ``shift_factor``):
``z_diffusion = (z - shift_factor) * scaling_factor``. Computing them needs one pass of the
encoder over the data, so the training package does it once and stores the result in the
checkpoint's training record (``info["training"]["latent_stats"]``), where
``tessera.model.interop.to_diffusers`` finds it.

    tessera latent-stats checkpoints/dcae-s48.safetensors --data data/corpus
"""

from __future__ import annotations

from pathlib import Path

import torch

from tessera import model as models
from tessera.training.dataset import TileData
from tessera.training.errors import DataError


@torch.no_grad()
def latent_statistics(module: torch.nn.Module, tiles: torch.Tensor, batch_size: int = 256) -> dict:
    """Mean and standard deviation of the latents of uint8 ``tiles`` (N, C, 32, 32): over every
    value, and per latent channel; plus ``scaling_factor = 1 / std`` and ``shift_factor = mean``."""
    module.eval()
    count, total, squares = 0, None, None
    for start in range(0, len(tiles), batch_size):
        z = module.encode(tiles[start : start + batch_size].float().div(255.0)).double()
        z = z.reshape(len(z), z.shape[1], -1) if z.ndim > 2 else z.reshape(len(z), -1, 1)  # (B, C, positions)
        total = z.sum(dim=(0, 2)) if total is None else total + z.sum(dim=(0, 2))
        squares = z.square().sum(dim=(0, 2)) if squares is None else squares + z.square().sum(dim=(0, 2))
        count += z.shape[0] * z.shape[2]
    channel_mean = total / count
    channel_std = (squares / count - channel_mean.square()).clamp_min(0).sqrt()
    mean = float(total.sum() / (count * len(total)))
    std = float((squares.sum() / (count * len(total)) - mean**2) ** 0.5)
    return {
        "mean": mean, "std": std, "scaling_factor": 1.0 / std if std > 0 else 1.0, "shift_factor": mean,
        "channel_mean": [round(v, 6) for v in channel_mean.tolist()],
        "channel_std": [round(v, 6) for v in channel_std.tolist()],
        "tiles": len(tiles),
    }


def add_latent_stats(checkpoint: str | Path, data: str | Path, out: str | Path | None = None) -> dict:
    """Compute the latents' statistics over ``data``'s training split and write them into the
    checkpoint's training record (the weights, their dtype and their sha256 stay as they are).
    An RGBA model is measured on the tiles with alpha."""
    module, info = models.load_checkpoint(checkpoint)
    tiles = TileData.open(data)
    rgba = module.config.in_channels == 4
    if rgba and not tiles.has_rgba:
        raise DataError(f"{checkpoint} is an RGBA model; {data} holds no RGBA tiles (build it with `tessera data corpus`)")
    train = torch.from_numpy(tiles.split("train/rgba" if rgba else "train")).permute(0, 3, 1, 2).contiguous()
    stats = {**latent_statistics(module, train), "data": tiles.describe()["name"],
             "manifest_sha256": tiles.manifest_sha256}
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(info["stored_dtype"])
    written = models.save_checkpoint(module, out or checkpoint, {**info["training"], "latent_stats": stats}, dtype)
    if written["weights_sha256"] != info["weights_sha256"]:  # fp16 -> fp32 -> fp16 is exact
        raise RuntimeError(f"rewriting {checkpoint} changed its weights")
    return stats
