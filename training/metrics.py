"""Reconstruction metrics over a whole split: L1, MSE, PSNR and SSIM.

L1, MSE and PSNR are computed on the raw decoder output (not clamped), like the original experiment's
validation loss; PSNR is ``10 * log10(1 / MSE)`` for pixels in [0, 1], from the MSE over the whole
split. SSIM is the mean over tiles of each tile's SSIM (11x11 Gaussian window), on the output
clamped to [0, 1] as a served tile is.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
from torch import nn

from tessera.training.losses import ssim

SUMS = 5  # |diff| sum, diff^2 sum, values, SSIM sum, tiles


def metrics_from_sums(l1_sum: float, se_sum: float, count: float, ssim_sum: float = math.nan,
                      tiles: float = math.nan) -> dict[str, float]:
    mse = se_sum / count
    return {
        "val_l1": l1_sum / count,
        "val_mse": mse,
        "val_psnr": 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf,
        "val_ssim": ssim_sum / tiles,
    }


RGBA_SUMS = 4  # alpha >= 0.5 intersection and union, squared colour error over covered pixels, their count


def premultiplied(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RGBA (B, 4, H, W) target and output as the RGB an image viewer shows on black."""
    return x[:, :3] * x[:, 3:4], x_hat[:, :3] * x_hat[:, 3:4].clamp(0, 1)


SHARPNESS_SUMS = 2  # image-gradient magnitude summed over the outputs, and over the targets


def gradient_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Per-pixel |grad| of images (B, C, H, W) from forward differences, (B, C, H-1, W-1)."""
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    return (dx.square() + dy.square()).sqrt()


def sharpness_from_sums(output: float, target: float) -> float:
    """Mean gradient magnitude of the reconstructions over the originals': 1.0 is as sharp, a blur
    is far below."""
    return output / target if target else 1.0


@torch.no_grad()
def reconstruction_sums(
    model: nn.Module, tiles: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu",
    autocast: Callable | None = None, rgba: bool = False, sharpness: bool = False,
) -> torch.Tensor:
    """Sums of |x_hat - x|, (x_hat - x)^2, the number of values, the tiles' SSIM and the number of
    tiles, as a float64 tensor (SUMS,); for an RGBA model (``rgba``, tiles (N, 4, 32, 32)) those
    compare the colours multiplied by alpha, and RGBA_SUMS more follow: the alpha masks'
    intersection and union (alpha >= 0.5) and the squared colour error over the pixels the target
    covers, with the number of colour values there. With ``sharpness``, SHARPNESS_SUMS more come
    last: the gradient magnitude of the (clamped) outputs and of the targets, summed. One pass of
    the model either way.

    tiles: uint8 (N, C, 32, 32). Sums (rather than means) let processes of a distributed run
    and the sources of a corpus add their shares. ``autocast`` is a context-manager factory for
    mixed precision.
    """
    was_training = model.training
    model.eval()
    extra = SUMS + (RGBA_SUMS if rgba else 0)
    sums = torch.zeros(extra + (SHARPNESS_SUMS if sharpness else 0), dtype=torch.float64, device=device)
    try:
        for start in range(0, len(tiles), batch_size):
            x = tiles[start : start + batch_size].to(device).float().div_(255.0)
            with autocast() if autocast is not None else contextlib.nullcontext():
                x_hat = model(x)
            x_hat = x_hat.float()
            if rgba:
                out = x_hat.clamp(0, 1)
                covered, predicted = x[:, 3:4] >= 0.5, out[:, 3:4] >= 0.5
                sums[SUMS] += (covered & predicted).sum()
                sums[SUMS + 1] += (covered | predicted).sum()
                sums[SUMS + 2] += ((out[:, :3] - x[:, :3]).square() * covered).sum(dtype=torch.float64)
                sums[SUMS + 3] += covered.sum() * 3
                x, x_hat = premultiplied(x, x_hat)
            diff = x_hat - x
            sums[0] += diff.abs().sum(dtype=torch.float64)
            sums[1] += diff.square().sum(dtype=torch.float64)
            sums[2] += diff.numel()
            sums[3] += ssim(x_hat.clamp(0, 1), x).sum(dtype=torch.float64)
            sums[4] += len(x)
            if sharpness:
                sums[extra] += gradient_magnitude(x_hat.clamp(0, 1)).sum(dtype=torch.float64)
                sums[extra + 1] += gradient_magnitude(x).sum(dtype=torch.float64)
    finally:
        model.train(was_training)
    return sums


def evaluate_reconstruction(
    model: nn.Module, tiles: torch.Tensor, batch_size: int = 256, device: torch.device | str = "cpu"
) -> dict[str, float]:
    """val_l1, val_mse, val_psnr and val_ssim of ``model`` on uint8 tiles (N, 3, 32, 32)."""
    return metrics_from_sums(*reconstruction_sums(model, tiles, batch_size, device).tolist())


def rgba_metrics_from_sums(intersection: float, union: float, se_sum: float, count: float) -> dict[str, float]:
    """``alpha_iou`` (1 when neither mask has a pixel) and ``covered_psnr`` (colour over covered pixels)."""
    mse = se_sum / count if count else math.nan
    return {
        "alpha_iou": intersection / union if union else 1.0,
        "covered_psnr": 10.0 * math.log10(1.0 / mse) if mse and mse > 0 else math.inf,
    }
