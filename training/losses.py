"""Training objectives: L1 reconstruction, optionally with a structure term, plus the original experiment's
latent regulariser.

- ``l1``: the original experiment's mean absolute error;
- ``l1+grad``: L1 plus ``weight`` times the L1 of the images' horizontal and vertical
  differences, which puts a price on soft or shifted edges (outlines are what a blurred tile loses);
- ``l1+ssim``: L1 plus ``weight`` times ``1 - SSIM`` (11x11 Gaussian window, as in Wang et al.).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tessera.training.config import LOSSES


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels (the original experiment's L1 loss)."""
    return F.l1_loss(x_hat, x)


def gradient_l1(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """L1 between the horizontal and vertical pixel differences of ``x_hat`` and ``x``."""
    dx = F.l1_loss(x_hat.diff(dim=-1), x.diff(dim=-1))
    dy = F.l1_loss(x_hat.diff(dim=-2), x.diff(dim=-2))
    return (dx + dy) / 2


def ssim(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """SSIM of each image in the batch, (B,), for pixels in [0, 1]."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    return structural_similarity_index_measure(x_hat, x, data_range=1.0, reduction="none")


def training_loss(x_hat: torch.Tensor, x: torch.Tensor, kind: str = "l1", weight: float = 0.0) -> torch.Tensor:
    """The objective ``kind`` (one of LOSSES) with the structure term scaled by ``weight``."""
    loss = reconstruction_loss(x_hat, x)
    if kind == "l1+grad":
        loss = loss + weight * gradient_l1(x_hat, x)
    elif kind == "l1+ssim":
        loss = loss + weight * (1 - ssim(x_hat, x).mean())
    elif kind != "l1":
        raise ValueError(f"unknown loss {kind!r}; known: {list(LOSSES)}")
    return loss


def latent_regulariser(z: torch.Tensor) -> torch.Tensor:
    """|0.5 - mean per-feature std over the batch| + |mean of z|: keeps latents centred with a
    spread of about 0.5, as the original experiment added with weight 1e-4. z: (B, ...)."""
    return (0.5 - z.std(dim=0).mean()).abs() + z.mean().abs()


def rgba_loss(x_hat: torch.Tensor, x: torch.Tensor, alpha_weight: float = 1.0) -> torch.Tensor:
    """L1 for RGBA tiles (B, 4, H, W) with straight (not multiplied) colour: colour errors weighted
    by the target's coverage, so invisible pixels cost nothing whatever colour they hold, plus
    ``alpha_weight`` times the alpha error. Both terms are means over the same number of values
    as plain L1."""
    alpha = x[:, 3:4]
    colour = (alpha * (x_hat[:, :3] - x[:, :3]).abs()).mean()
    return colour + alpha_weight * (x_hat[:, 3:4] - alpha).abs().mean()
