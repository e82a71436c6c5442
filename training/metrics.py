"""Reconstruction metrics: L1, MSE and PSNR over a whole split.

Computed on the raw decoder output (not clamped), like the seed's validation loss; PSNR is
``10 * log10(1 / MSE)`` for pixels in [0, 1], from the MSE over the whole split.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


def metrics_from_sums(l1_sum: float, se_sum: float, count: float) -> dict[str, float]:
    mse = se_sum / count
    return {
        "val_l1": l1_sum / count,
        "val_mse": mse,
        "val_psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf,
    }


@torch.no_grad()
def reconstruction_sums(
    model: nn.Module, tiles: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu",
    autocast: Callable | None = None,
) -> torch.Tensor:
    """Sums of |x_hat - x| and (x_hat - x)^2 and the number of values, as a float64 tensor (3,).

    tiles: uint8 (N, 3, 32, 32). Sums (rather than means) let processes of a distributed run
    add their shares. ``autocast`` is a context-manager factory for mixed precision.
    """
    was_training = model.training
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=device)
    try:
        for start in range(0, len(tiles), batch_size):
            x = tiles[start : start + batch_size].to(device).float().div_(255.0)
            if autocast is not None:
                with autocast():
                    x_hat = model(x)
            else:
                x_hat = model(x)
            diff = x_hat.float() - x
            sums[0] += diff.abs().sum(dtype=torch.float64)
            sums[1] += diff.square().sum(dtype=torch.float64)
            sums[2] += diff.numel()
    finally:
        model.train(was_training)
    return sums


def evaluate_reconstruction(
    model: nn.Module, tiles: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """val_l1, val_mse and val_psnr of ``model`` on uint8 tiles (N, 3, 32, 32)."""
    l1_sum, se_sum, count = reconstruction_sums(model, tiles, batch_size, device).tolist()
    return metrics_from_sums(l1_sum, se_sum, count)
