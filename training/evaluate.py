"""Compare checkpoints on a data set's validation split (or its training tiles): size, ratio,
L1/MSE/PSNR/SSIM per source and over all of them, and speed. RGBA checkpoints are measured on the tiles
with alpha: L1/PSNR/SSIM of the colours multiplied by alpha (the RGB models' target, so the
rows compare), alpha IoU (alpha >= 0.5) and PSNR of the colour over covered pixels.

    report = evaluate_checkpoints(["checkpoints/baseline.safetensors"], "data/dcss")
    print(write_report(report, "docs/evaluation"))  # writes .md and .json
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

import model as models
from training.atomic import atomic_write_text
from training.dataset import TileData
from training.errors import DataError
from training.metrics import SUMS, metrics_from_sums, reconstruction_sums, rgba_metrics_from_sums
from training.plots import display_name

SPLITS = {"val": "validation", "train": "training"}  # --split: the tiles a report measures
MIN_TIMING_S = 1.0  # time each direction for at least this long (and at least 3 batches)


@torch.inference_mode()
def tiles_per_second(fn, x: torch.Tensor) -> float:
    """Throughput of ``fn`` on batch ``x`` after two warm-up calls."""
    for _ in range(2):
        fn(x)
    runs, start = 0, time.perf_counter()
    while runs < 3 or time.perf_counter() - start < MIN_TIMING_S:
        fn(x)
        runs += 1
    return runs * len(x) / (time.perf_counter() - start)


def _metrics(sums: torch.Tensor, rgba: bool) -> dict[str, float]:
    metrics = metrics_from_sums(*sums[:SUMS].tolist())
    if rgba:
        metrics.update({f"val_{k}": v for k, v in rgba_metrics_from_sums(*sums[SUMS:].tolist()).items()})
    return metrics


def evaluate_checkpoint(path: str | Path, tiles: dict[str, torch.Tensor], batch_size: int = 256,
                        device: str = "cpu", tiles_rgba: dict[str, torch.Tensor] | None = None) -> dict:
    """One row of the table for checkpoint ``path``; ``tiles``: uint8 (N, 3, 32, 32) tiles per
    source, ``tiles_rgba`` the same tiles with alpha (N, 4, 32, 32), which RGBA models need."""
    module, info = models.load_checkpoint(path, device=device)
    rgba = module.config.in_channels == 4
    if rgba:
        if tiles_rgba is None:
            raise DataError(f"{path} is an RGBA model; evaluate it on a data set with alpha (`tessera data corpus`)")
        tiles = tiles_rgba
    sums = {src: reconstruction_sums(module, part, batch_size, device, rgba=rgba) for src, part in tiles.items()}
    metrics = _metrics(torch.stack(list(sums.values())).sum(0), rgba)
    per_source = {src: _metrics(s, rgba) for src, s in sums.items()}
    every = torch.cat(list(tiles.values()))
    x = every[:batch_size].to(device).float().div(255.0)
    if len(x) < batch_size:  # a small split: repeat it to fill the timing batch
        x = x.repeat(-(-batch_size // len(x)), 1, 1, 1)[:batch_size]
    z = module.encode(x).detach()
    training = info.get("training") or {}
    return {
        "name": display_name(Path(path)),
        "path": str(path),
        "arch": info["arch"],
        "spec": info.get("spec"),
        "params": info["params"],
        "compression_ratio": info["compression_ratio"],
        "latent_shape": info["latent_shape"],
        "channels": "RGBA" if rgba else "RGB",
        "stored_dtype": info.get("stored_dtype"),
        "inputs_seen": training.get("inputs_seen"),
        **metrics,
        "sources": {src: {k[len("val_"):]: v for k, v in m.items()} for src, m in per_source.items()},
        "encode_tiles_per_s": tiles_per_second(module.encode, x),
        "decode_tiles_per_s": tiles_per_second(module.decode, z),
    }


def evaluate_checkpoints(paths: list[str], data: str | Path, batch_size: int = 256, device: str = "cpu",
                         split: str = "val") -> dict:
    """Rows for every checkpoint plus what they were measured on. ``split="train"`` measures the
    training tiles instead (the metrics keep their ``val_`` names): a model that scores there
    what it scores on validation is short of capacity, not of data."""
    tiles = TileData.open(data)
    def channels_first(sources: dict) -> dict[str, torch.Tensor]:
        return {src: torch.from_numpy(t).permute(0, 3, 1, 2).contiguous() for src, t in sources.items()}

    measured = channels_first(tiles.sources_of(split))
    measured_rgba = channels_first(tiles.sources_of(split, rgba=True)) if tiles.has_rgba else None
    rows = [evaluate_checkpoint(p, measured, batch_size, device, measured_rgba) for p in paths]
    return {
        "split": split,
        "data": {**tiles.describe(), "source_counts": {src: len(t) for src, t in measured.items()}},
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_size": batch_size,
        "torch": torch.__version__,
        "rows": rows,
    }


def markdown_table(report: dict) -> str:
    rows = report["rows"]
    sources = list(rows[0]["sources"]) if rows else []
    several = len(sources) > 1
    split = report.get("split", "val")
    head = f"| model | params | ratio | latent | {split} L1 | {split} PSNR (dB) | {split} SSIM |"
    rule = "|---|---:|---:|---|---:|---:|---:|"
    if several:
        head += "".join(f" {src} PSNR / SSIM |" for src in sources)
        rule += "---:|" * len(sources)
    head += " encode tiles/s | decode tiles/s | inputs seen |\n"
    rule += "---:|---:|---:|\n"
    lines = []
    for r in rows:
        seen = f"{r['inputs_seen']:,}" if r["inputs_seen"] is not None else "?"
        cells = "".join(f" {r['sources'][s]['psnr']:.2f} / {r['sources'][s]['ssim']:.3f} |" for s in sources) \
            if several else ""
        lines.append(
            f"| {r['name']} | {r['params'] / 1e6:.2f}M | {r['compression_ratio']:g} "
            f"| {'x'.join(map(str, r['latent_shape']))} "
            f"| {r['val_l1']:.5f} | {r['val_psnr']:.2f} | {r['val_ssim']:.3f} |{cells} {r['encode_tiles_per_s']:,.0f} "
            f"| {r['decode_tiles_per_s']:,.0f} | {seen} |"
        )
    alpha = [r for r in rows if r.get("channels") == "RGBA"]
    if alpha:
        lines += ["", "RGBA models: L1/PSNR/SSIM above compare colours multiplied by alpha (the RGB models' target).", "",
                  "| model | alpha IoU (>= 0.5) | covered-colour PSNR (dB) |" + "".join(f" {s} IoU / PSNR |" for s in sources),
                  "|---|---:|---:|" + "---:|" * len(sources)]
        for r in alpha:
            cells = "".join(f" {r['sources'][s]['alpha_iou']:.4f} / {r['sources'][s]['covered_psnr']:.2f} |" for s in sources)
            lines.append(f"| {r['name']} | {r['val_alpha_iou']:.4f} | {r['val_covered_psnr']:.2f} |{cells}")
    data = report["data"]
    counts = data.get("source_counts") or {}
    described = ", ".join(f"{s} {counts[s]}" for s in counts) if several else f"{data['counts'][split]} tiles"
    note = (f"\n{SPLITS[split].capitalize()} split of `{data['name']}` ({described}; manifest sha256 "
            f"{data['manifest_sha256'][:12]}); {split} columns pool every {SPLITS[split]} tile; speed on "
            f"{report['device']} with {report['threads']} thread(s), batch {report['batch_size']}, "
            f"torch {report['torch']}.\n")
    return head + rule + "\n".join(lines) + "\n" + note


def write_report(report: dict, out: str | Path) -> str:
    """Write ``out.md`` and ``out.json``; return the markdown."""
    table = markdown_table(report)
    atomic_write_text(f"{out}.md", table)
    atomic_write_text(f"{out}.json", json.dumps(report, indent=2) + "\n")
    return table
