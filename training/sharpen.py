"""A sharp decoder for a trained model's latents: the DC-AE recipe's last phase.

The encoder (and so the latent space) stays frozen, as does the decoder but for its head: the
last stage that has blocks, its output norm and its output layer. The head is fine-tuned on the
reconstruction loss plus an adversarial loss against a small patch discriminator, which prices
the softness an L1- or MSE-trained decoder settles for: sharper tiles at some cost in PSNR. The
result is a checkpoint of the whole model whose encoder is bit-identical to its base's, so it
decodes the base's latents (``<model>.sharp.safetensors`` beside ``<model>.safetensors`` serves
as ``/v1/decode?decoder=sharp``).

    tessera sharpen checkpoints/dcae-s48-f8c4.safetensors --data data/corpus --out runs/sharp
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from tessera import model as models
from tessera.training.atomic import atomic_write_text
from tessera.training.config import SharpenConfig
from tessera.training.dataset import TileData, TileDataset
from tessera.training.metrics import gradient_magnitude
from tessera.training.loop import git_revision


def decoder_head(module: nn.Module) -> list[nn.Module]:
    """The modules of a DC-AE decoder's head: its full-resolution stage with blocks (stage 0 when
    it has any, else stage 1), the output norm and the output layer."""
    decoder = module.decoder
    first = 0 if len(decoder.up_blocks[0]) else 1
    return [decoder.up_blocks[first], decoder.norm_out, decoder.conv_out]


class PatchDiscriminator(nn.Module):
    """A small PatchGAN: three strided convolutions to a 4x4 map of real/fake scores per tile."""

    def __init__(self, channels: int, width: int = 32) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.GroupNorm(8, 2 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 4 * width, 4, 2, 1), nn.GroupNorm(8, 4 * width), nn.LeakyReLU(0.2),
            nn.Conv2d(4 * width, 1, 3, 1, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x * 2 - 1)


@torch.no_grad()
def measure(module: nn.Module, tiles: torch.Tensor, batch: int = 256) -> dict[str, float]:
    """PSNR (clamped output) and sharpness of ``module`` on uint8 tiles (N, C, 32, 32)."""
    se = grad_out = grad_in = 0.0
    for start in range(0, len(tiles), batch):
        x = tiles[start : start + batch].float() / 255
        out = module(x).clamp(0, 1)
        se += (out - x).square().sum().item()
        grad_out += gradient_magnitude(out).sum().item()
        grad_in += gradient_magnitude(x).sum().item()
    return {"psnr": 10 * math.log10(tiles.numel() / se), "sharpness": grad_out / grad_in}


def sharpen(config: SharpenConfig, command: str = "") -> dict:
    """Fine-tune the head of ``config.checkpoint``'s decoder adversarially; write ``last.safetensors``,
    ``val.csv``, ``train.csv`` and ``run.json`` in ``config.out``; the last validation."""
    if config.threads:
        torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    module, info = models.load_checkpoint(config.checkpoint)
    if info.get("arch") != "dcae":
        raise ValueError(f"{config.checkpoint}: only DC-AE decoders have a head to sharpen, this is {info.get('arch')}")
    rgba = module.config.in_channels == 4
    data = TileData.open(config.data)
    train_set = TileDataset(data.split("train/rgba" if rgba else "train"), augment=config.augment, seed=config.seed)
    val = torch.from_numpy(data.split("val/rgba" if rgba else "val")).permute(0, 3, 1, 2).contiguous()
    module.eval()  # BatchNorm keeps its statistics: the frozen parts must stay the base's
    for p in module.parameters():
        p.requires_grad_(False)
    head = [p for m in decoder_head(module) for p in m.parameters()]
    for p in head:
        p.requires_grad_(True)
    disc = PatchDiscriminator(module.config.in_channels)
    opt_g = torch.optim.Adam(head, lr=config.lr, betas=(0.5, 0.9))
    opt_d = torch.optim.Adam(disc.parameters(), lr=config.lr, betas=(0.5, 0.9))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    base = measure(module, val)
    record = {"command": command, "base": {"checkpoint": config.checkpoint, "weights_sha256": info["weights_sha256"],
                                      "spec": info.get("spec"), **base},
              "config": asdict(config), "data": data.describe(), **git_revision(), "torch": torch.__version__}
    train_log = (out / "train.csv").open("w", newline="")
    val_log = (out / "val.csv").open("w", newline="")
    train_rows = csv.writer(train_log)
    train_rows.writerow(["inputs", "rec", "g_adv", "d_loss", "inputs_per_s"])
    val_rows = csv.writer(val_log)
    val_rows.writerow(["inputs", "psnr", "sharpness"])
    val_rows.writerow([0, base["psnr"], base["sharpness"]])
    inputs, epoch, start = 0, 0, time.perf_counter()
    metrics = base
    while inputs < config.max_inputs:
        train_set.set_epoch(epoch)
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(config.seed + epoch))
        for first in range(0, len(order) - config.batch_size + 1, config.batch_size):
            x = train_set.__getitems__(order[first : first + config.batch_size].tolist())
            with torch.no_grad():
                z = module.encode(x)
            x_hat = module.decode(z)
            rec = F.l1_loss(x_hat, x)
            adversarial = inputs >= config.adv_start
            g_adv = -disc(x_hat).mean() if adversarial else torch.zeros(())
            opt_g.zero_grad(set_to_none=True)
            (rec + config.adv_weight * g_adv).backward()
            opt_g.step()
            d_loss = F.relu(1 - disc(x)).mean() + F.relu(1 + disc(x_hat.detach().clamp(0, 1))).mean()
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            inputs += len(x)
            if (inputs // len(x)) % 10 == 0:
                train_rows.writerow([inputs, f"{rec.item():.5f}", f"{g_adv.item():.4f}", f"{d_loss.item():.4f}",
                                     f"{inputs / (time.perf_counter() - start):.1f}"])
            if inputs % config.eval_every < len(x) or inputs >= config.max_inputs:
                metrics = measure(module, val)
                val_rows.writerow([inputs, metrics["psnr"], metrics["sharpness"]])
                val_log.flush()
                train_log.flush()
                print(f"{inputs:,} inputs: val PSNR {metrics['psnr']:.2f} dB, sharpness {metrics['sharpness']:.3f} "
                      f"(base {base['psnr']:.2f} dB, {base['sharpness']:.3f})", flush=True)
            if inputs >= config.max_inputs:
                break
        epoch += 1
    train_log.close()
    val_log.close()
    record["inputs_seen"] = inputs
    record["elapsed_s"] = time.perf_counter() - start
    record["metrics"] = metrics
    training = {**(info.get("training") or {}), "sharpened": record}
    models.save_checkpoint(module, out / "last.safetensors", training, getattr(torch, config.checkpoint_dtype))
    atomic_write_text(out / "run.json", json.dumps(record, indent=2) + "\n")
    return record
