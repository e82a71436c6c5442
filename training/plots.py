"""Figures: validation curves of several runs, and reconstructions side by side.

Matplotlib runs on the Agg backend (no display needed); PNGs are written atomically.
"""

from __future__ import annotations

import functools
import math
import re
from pathlib import Path

import numpy as np
import torch

from tessera import model as models
from tessera.training.atomic import atomic_write
from tessera.training.dataset import TileData
from tessera.training.errors import DataError, TrainingError
from tessera.training.logs import read_csv

LABELS = {"val_l1": "validation L1", "val_mse": "validation MSE", "val_psnr": "validation PSNR (dB)"}
# a column of one validation source: <source>_l1, <source>_psnr, ... (val.csv's per-source columns)
KINDS = {"l1": "L1", "mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "alpha_iou": "alpha IoU",
         "covered_psnr": "covered-colour PSNR (dB)"}
SOURCE_METRIC = re.compile(rf"(?P<source>[a-z0-9][a-z0-9-]*)_(?P<kind>{'|'.join(KINDS)})")  # sources have no "_"
COLUMNS = 8  # tiles per row of the reconstruction grid


def metric_label(metric: str) -> str:
    """The axis label of a val.csv column: a pooled one (``val_psnr``) or one source's (``dcss_psnr``)."""
    if metric in LABELS:
        return LABELS[metric]
    match = SOURCE_METRIC.fullmatch(metric)
    if match is None:
        raise ValueError(f"unknown metric {metric!r}; known: {sorted(LABELS)} or <source>_<{'|'.join(KINDS)}>")
    return f"{match['source']} validation {KINDS[match['kind']]}"


def _pyplot():
    try:
        import matplotlib
    except ImportError as exc:
        raise TrainingError("plots need the 'train' extra: pip install -e '.[train]'") from exc

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> Path:
    path = atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=fig.dpi, bbox_inches="tight"))
    _pyplot().close(fig)
    return path


def plot_curves(runs: list[str | Path], out: str | Path, metric: str = "val_l1") -> Path:
    """One PNG with ``metric`` against training inputs for every run folder that has a val.csv."""
    label = metric_label(metric)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    drawn = 0
    for run in map(Path, runs):
        log = run / "val.csv"
        if not log.is_file():
            continue
        rows = read_csv(log)
        if not rows or metric not in rows[0]:  # a run without that source
            continue
        inputs = [int(r["inputs"]) for r in rows]
        values = [float(r[metric]) for r in rows]
        ax.plot(inputs, values, label=f"{run.name} ({values[-1]:.4g})")
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise DataError(f"none of {', '.join(map(str, runs))} is a run folder with a val.csv that has {metric}; "
                        f"pass run folders")
    ax.set_xlabel("training inputs")
    ax.set_ylabel(label)
    if metric.endswith(("l1", "mse")):
        ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"{label} during training")
    return _save(fig, out)


def display_name(path: Path) -> str:
    """A checkpoint's name: its stem, or "<run> (best)" for a run folder's best/last file."""
    return f"{path.parent.name} ({path.stem})" if path.stem in ("best", "last") else path.stem


def checkpoint_of(run: str | Path) -> Path:
    """A run folder's best checkpoint (else its last), or the checkpoint file itself."""
    run = Path(run)
    if run.is_file():
        return run
    for name in ("best.safetensors", "last.safetensors"):
        if (run / name).is_file():
            return run / name
    raise DataError(f"{run} has no best.safetensors or last.safetensors; pass a run folder or a checkpoint file")


def grid_image(original: np.ndarray, reconstructed: np.ndarray, columns: int = COLUMNS) -> np.ndarray:
    """Rows of originals, each above its reconstructions, with 2-pixel grey gaps between pairs.

    original, reconstructed: uint8 (N, 32, 32, 3) -> uint8 (H, W, 3).
    """
    n, side = len(original), original.shape[1]
    pairs = math.ceil(n / columns)
    gap = 2
    image = np.full((pairs * (2 * side + gap) - gap, columns * side, 3), 96, dtype=np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        top = r * (2 * side + gap)
        image[top : top + side, c * side : (c + 1) * side] = original[i]
        image[top + side : top + 2 * side, c * side : (c + 1) * side] = reconstructed[i]
    return image


def on_checkerboard(rgba: np.ndarray, square: int = 4) -> np.ndarray:
    """uint8 (N, H, W, 4) composited over a light grey checkerboard of ``square``-pixel squares
    (as image editors show transparency) -> uint8 (N, H, W, 3)."""
    height, width = rgba.shape[1:3]
    ys, xs = np.indices((height, width)) // square
    board = np.where((ys + xs) % 2 == 0, 204, 153).astype(np.float64)[None, :, :, None]
    alpha = rgba[..., 3:4].astype(np.float64) / 255.0
    return np.round(rgba[..., :3] * alpha + board * (1.0 - alpha)).astype(np.uint8)


def validation_sample(data: TileData, count: int, rgba: bool = False) -> np.ndarray:
    """The first validation tiles of each source, in equal shares (rows of the grid alternate
    sources when there are several), ``count`` in all; with alpha when ``rgba``."""
    sources = list(data.sources_of("val", rgba=rgba).values())
    share = max(1, -(-count // len(sources)))
    return np.concatenate([tiles[:share] for tiles in sources])[:count]


@torch.inference_mode()
def plot_reconstructions(runs: list[str | Path], data: str | Path, out: str | Path, count: int = 32) -> Path:
    """Validation tiles (original row above reconstruction row) for each model, side by side;
    an RGBA model's tiles with alpha, over a checkerboard."""
    if count < 1:
        raise ValueError(f"--tiles must be at least 1, got {count}")
    tiles = TileData.open(data)

    @functools.cache
    def sample(rgba: bool) -> np.ndarray:  # read once per kind, whatever the number of runs
        return validation_sample(tiles, count, rgba)

    plt = _pyplot()
    rows = math.ceil(len(sample(False)) / COLUMNS)
    fig, axes = plt.subplots(1, len(runs), figsize=(5.5 * len(runs), 5.5 * rows / 4 + 0.8), dpi=120, squeeze=False)
    for ax, run in zip(axes[0], runs):
        path = checkpoint_of(run)
        module, info = models.load_checkpoint(path)
        rgba = module.config.in_channels == 4
        val = sample(rgba)
        x = torch.from_numpy(val).permute(0, 3, 1, 2).float().div(255.0)
        x_hat = module(x).clamp(0, 1)
        recon = (x_hat * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        l1 = (x_hat - x).abs().mean().item()
        name = Path(run).name if Path(run).is_dir() else display_name(path)
        shown = (on_checkerboard(val), on_checkerboard(recon)) if rgba else (val, recon)
        ax.imshow(grid_image(*shown), interpolation="nearest")
        ax.set_title(f"{name}\nratio {info['compression_ratio']:g}, L1 {l1:.4f} on these tiles", fontsize=10)
        ax.axis("off")
    return _save(fig, out)
