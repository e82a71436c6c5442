"""Training objective: L1 reconstruction plus the seed's optional latent regulariser."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(x_hat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over all pixels and channels (the seed's L1 loss)."""
    return F.l1_loss(x_hat, x)


def latent_regulariser(z: torch.Tensor) -> torch.Tensor:
    """|0.5 - mean per-feature std over the batch| + |mean of z|: keeps latents centred with a
    spread of about 0.5, as the seed added with weight 1e-4. z: (B, ...)."""
    return (0.5 - z.std(dim=0).mean()).abs() + z.mean().abs()
