"""Compare checkpoints on a data set's validation split (or its training tiles): size, ratio,
L1/MSE/PSNR/SSIM per source and over all of them, and speed. RGBA checkpoints are measured on the tiles
with alpha: L1/PSNR/SSIM of the colours multiplied by alpha (the RGB models' target, so the
rows compare), alpha IoU (alpha >= 0.5) and PSNR of the colour over covered pixels.

Every model is also measured against its yardstick, PCA with as many components as the model has
latent values per tile, fitted on the model's own training split (``tessera.training.pca``): the PCA's
PSNR and the model's margin over it, per source and overall, and both reconstructions' sharpness
(mean image-gradient magnitude over the originals'; 1.0 is as sharp).

    report = evaluate_checkpoints(["checkpoints/baseline.safetensors"], "data/dcss")
    print(write_report(report, "docs/evaluation"))  # writes .md and .json
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch

from tessera import model as models
from tessera.training.atomic import atomic_write_text
from tessera.training.dataset import TileData
from tessera.training.errors import DataError
from tessera.training.metrics import (RGBA_SUMS, SUMS, metrics_from_sums, reconstruction_sums, rgba_metrics_from_sums,
                              sharpness_from_sums)
from tessera.training.pca import PCA
from tessera.training.plots import display_name

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
    end = SUMS + (RGBA_SUMS if rgba else 0)
    if rgba:
        metrics.update({f"val_{k}": v for k, v in rgba_metrics_from_sums(*sums[SUMS:end].tolist()).items()})
    metrics["val_sharpness"] = sharpness_from_sums(*sums[end:].tolist())
    return metrics


def _measure(module: torch.nn.Module, tiles: dict[str, torch.Tensor], batch_size: int, device: str,
             rgba: bool) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Metrics over all tiles pooled, and per source."""
    sums = {src: reconstruction_sums(module, part, batch_size, device, rgba=rgba, sharpness=True)
            for src, part in tiles.items()}
    return _metrics(torch.stack(list(sums.values())).sum(0), rgba), {src: _metrics(s, rgba) for src, s in sums.items()}


def training_data(record: dict, candidates: list[str | Path]) -> TileData | None:
    """The first of ``candidates`` (and the folder the record names) that holds the data set the
    model trained on, by its manifest hash; None when none does."""
    data = record.get("data") or {}
    wanted = data.get("manifest_sha256")
    for folder in [*candidates, data.get("path")]:
        if wanted and folder and (Path(folder) / "manifest.json").is_file():
            found = TileData.open(folder)
            if found.manifest_sha256 == wanted:
                return found
    return None


def yardstick(module: torch.nn.Module, info: dict, evaluated: TileData, train_data: list[str | Path],
              tiles: dict[str, torch.Tensor], batch_size: int, device: str, rgba: bool,
              metrics: dict[str, float], per_source: dict[str, dict[str, float]]) -> dict:
    """PCA with the model's number of latent values, fitted on the model's training split (or,
    when that data set is not here, on the evaluated one's, and said so), measured on ``tiles``."""
    fitted = training_data(info.get("training") or {}, train_data)
    own = fitted is not None
    pca = PCA.fit(fitted if own else evaluated, math.prod(info["latent_shape"]), rgba=rgba).to(device)
    pca_all, pca_sources = _measure(pca, tiles, batch_size, device, rgba)
    return {
        "components": pca.components,
        "fitted_on": {"name": (fitted or evaluated).manifest["name"], "path": str((fitted or evaluated).path),
                      "manifest_sha256": (fitted or evaluated).manifest_sha256, "models_training_data": own},
        "psnr": pca_all["val_psnr"],
        "sharpness": pca_all["val_sharpness"],
        "margin_db": metrics["val_psnr"] - pca_all["val_psnr"],
        "sources": {src: {"psnr": pca_sources[src]["val_psnr"], "sharpness": pca_sources[src]["val_sharpness"],
                          "margin_db": per_source[src]["val_psnr"] - pca_sources[src]["val_psnr"]}
                    for src in tiles},
    }


def evaluate_checkpoint(path: str | Path, tiles: dict[str, torch.Tensor], batch_size: int = 256,
                        device: str = "cpu", tiles_rgba: dict[str, torch.Tensor] | None = None,
                        evaluated: TileData | None = None, train_data: list[str | Path] = ()) -> dict:
    """One row of the table for checkpoint ``path``; ``tiles``: uint8 (N, 3, 32, 32) tiles per
    source, ``tiles_rgba`` the same tiles with alpha (N, 4, 32, 32), which RGBA models need.
    With ``evaluated`` (the data set the tiles come from), the row has its PCA yardstick, fitted
    on the first of ``train_data`` that is the model's training data set."""
    module, info = models.load_checkpoint(path, device=device)
    rgba = module.config.in_channels == 4
    if rgba:
        if tiles_rgba is None:
            raise DataError(f"{path} is an RGBA model; evaluate it on a data set with alpha (`tessera data corpus`)")
        tiles = tiles_rgba
    metrics, per_source = _measure(module, tiles, batch_size, device, rgba)
    pca = (yardstick(module, info, evaluated, list(train_data), tiles, batch_size, device, rgba, metrics, per_source)
           if evaluated is not None else None)
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
        "pca": pca,
        "encode_tiles_per_s": tiles_per_second(module.encode, x),
        "decode_tiles_per_s": tiles_per_second(module.decode, z),
    }


def evaluate_checkpoints(paths: list[str], data: str | Path, batch_size: int = 256, device: str = "cpu",
                         split: str = "val", train_data: list[str | Path] = ()) -> dict:
    """Rows for every checkpoint plus what they were measured on. ``split="train"`` measures the
    training tiles instead (the metrics keep their ``val_`` names): a model that scores there
    what it scores on validation is short of capacity, not of data. ``train_data``: folders to
    look in for each model's training data set, on which its PCA yardstick is fitted (``data``
    and the folder the model's record names are looked in too)."""
    tiles = TileData.open(data)
    def channels_first(sources: dict) -> dict[str, torch.Tensor]:
        return {src: torch.from_numpy(t).permute(0, 3, 1, 2).contiguous() for src, t in sources.items()}

    measured = channels_first(tiles.sources_of(split))
    measured_rgba = channels_first(tiles.sources_of(split, rgba=True)) if tiles.has_rgba else None
    candidates = [*train_data, data]
    rows = [evaluate_checkpoint(p, measured, batch_size, device, measured_rgba, tiles, candidates) for p in paths]
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
    lines += pca_table(rows, sources, split)
    data = report["data"]
    counts = data.get("source_counts") or {}
    described = ", ".join(f"{s} {counts[s]}" for s in counts) if several else f"{data['counts'][split]} tiles"
    note = (f"\n{SPLITS[split].capitalize()} split of `{data['name']}` ({described}; manifest sha256 "
            f"{data['manifest_sha256'][:12]}); {split} columns pool every {SPLITS[split]} tile; speed on "
            f"{report['device']} with {report['threads']} thread(s), batch {report['batch_size']}, "
            f"torch {report['torch']}.\n")
    return head + rule + "\n".join(lines) + "\n" + note


def pca_table(rows: list[dict], sources: list[str], split: str) -> list[str]:
    """The yardstick's lines: each model against PCA with as many components as it has latent values."""
    measured = [r for r in rows if r.get("pca")]
    if not measured:
        return []
    several = len(sources) > 1
    lines = ["", f"Against PCA with as many components as latent values per tile, fitted on the model's training "
             f"split: {split} PSNR of both, the model's margin, and sharpness (mean image-gradient magnitude over "
             "the originals'; 1.0 is as sharp).", "",
             f"| model | latent values | PCA fitted on | {split} PSNR | PCA PSNR | margin (dB) | sharpness | PCA sharpness |"
             + ("".join(f" {s} margin |" for s in sources) if several else ""),
             "|---|---:|---|---:|---:|---:|---:|---:|" + ("---:|" * len(sources) if several else "")]
    for r in measured:
        pca = r["pca"]
        fitted = f"`{pca['fitted_on']['path']}`" + ("" if pca["fitted_on"]["models_training_data"]
                                                     else " (not the model's training data)")
        cells = "".join(f" {pca['sources'][s]['margin_db']:+.2f} |" for s in sources) if several else ""
        lines.append(f"| {r['name']} | {pca['components']} | {fitted} | {r['val_psnr']:.2f} | {pca['psnr']:.2f} "
                     f"| {pca['margin_db']:+.2f} | {r['val_sharpness']:.3f} | {pca['sharpness']:.3f} |{cells}")
    return lines


def write_report(report: dict, out: str | Path) -> str:
    """Write ``out.md`` and ``out.json``; return the markdown."""
    table = markdown_table(report)
    atomic_write_text(f"{out}.md", table)
    atomic_write_text(f"{out}.json", json.dumps(report, indent=2) + "\n")
    return table
