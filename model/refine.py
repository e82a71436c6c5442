"""Encode effort: latents refined for their tile through the frozen decoder.

An encoder maps a tile to its latent in one pass; the latent that the decoder turns back into
the closest tile is usually a little way off. ``refine`` moves each tile's latent towards it
with Adam on the squared error of its own reconstruction (PSNR's measure), the decoder's
weights untouched, so the latents stay what any copy of the same decoder (ONNX, the browser
page) decodes. Every tile is optimised on its own: the decoder runs in eval mode and the loss is
a sum over tiles, so a tile's latent does not depend on its batch.

The optimiser state of a tile (its latent, Adam's two moments and its step count) travels in
one flat float32 row (``pack``/``unpack``), so that one step of many tiles from many requests
runs as one batch, whatever step each of them is at.

    z = refine(module, x, steps=10)  # x: (N, C, 32, 32) in [0, 1]
"""

from __future__ import annotations

import torch
from torch import nn

REFINE_LR = 0.2  # Adam's step size on the latents (docs/encode-effort.md: how it was picked)
BETAS = (0.9, 0.999)
EPS = 1e-8


def refine_step(decoder: nn.Module, x: torch.Tensor, z: torch.Tensor, m: torch.Tensor, v: torch.Tensor,
                t: torch.Tensor, lr: float = REFINE_LR) -> tuple[torch.Tensor, ...]:
    """One Adam step of every latent in ``z`` (N, *latent_shape) towards the tile ``x`` (N, C, 32, 32):
    the new ``z, m, v, t``; ``t`` (N,) counts each row's steps, for Adam's bias correction."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        loss = (decoder(z).float() - x).square().sum()
        (grad,) = torch.autograd.grad(loss, z)
    t = t + 1
    m = BETAS[0] * m + (1 - BETAS[0]) * grad
    v = BETAS[1] * v + (1 - BETAS[1]) * grad.square()
    shape = (-1,) + (1,) * (z.dim() - 1)
    m_hat = m / (1 - BETAS[0] ** t).view(shape)
    v_hat = v / (1 - BETAS[1] ** t).view(shape)
    return (z - lr * m_hat / (v_hat.sqrt() + EPS)).detach(), m, v, t


def refine(module: nn.Module, x: torch.Tensor, steps: int, lr: float = REFINE_LR,
           z: torch.Tensor | None = None) -> torch.Tensor:
    """The latents of tiles ``x`` after ``steps`` Adam steps from ``z`` (default: the encoder's)."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            z = module.encode(x) if z is None else z
        m, v, t = torch.zeros_like(z), torch.zeros_like(z), torch.zeros(len(z))
        for _ in range(steps):
            z, m, v, t = refine_step(module.decode, x, z, m, v, t, lr)
        return z
    finally:
        module.train(was_training)


def row_width(channels: int, latent_values: int) -> int:
    """Values in one packed row: the tile, the latent, Adam's two moments and the step count."""
    return channels * 32 * 32 + 3 * latent_values + 1


def pack(x: torch.Tensor, z: torch.Tensor, m: torch.Tensor | None = None, v: torch.Tensor | None = None,
         t: torch.Tensor | None = None) -> torch.Tensor:
    """Rows (N, row_width) holding each tile's refinement state; fresh moments when not given."""
    n = len(x)
    m = torch.zeros_like(z) if m is None else m
    v = torch.zeros_like(z) if v is None else v
    t = torch.zeros(n) if t is None else t
    return torch.cat([x.reshape(n, -1), z.reshape(n, -1), m.reshape(n, -1), v.reshape(n, -1), t.view(n, 1)], 1)


def unpack(rows: torch.Tensor, channels: int, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """``x, z, m, v, t`` from rows that ``pack`` made."""
    n, pixels = len(rows), channels * 32 * 32
    latent = 1
    for d in latent_shape:
        latent *= d
    x = rows[:, :pixels].reshape(n, channels, 32, 32)
    z, m, v = (rows[:, pixels + i * latent : pixels + (i + 1) * latent].reshape(n, *latent_shape) for i in range(3))
    return x, z, m, v, rows[:, -1]
