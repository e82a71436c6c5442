"""Encode effort measured: PSNR of refined latents (``tessera.model.refine``) against CPU time per tile.

For each optimiser setting, every model's validation tiles are refined step by step; after each
listed step count the PSNR of the decoded tiles (clamped, as served) and the process CPU time
spent so far per tile are recorded. Prints a table and writes bench/results/refine.json.

    python -m bench.refine --checkpoint checkpoints/dcae-s48-f8c4.safetensors --data data/dcss
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from tessera import model as models
from tessera.model.refine import REFINE_LR, refine_step
from tessera.training.dataset import TileData

STEPS = (0, 1, 2, 5, 10, 25, 50, 100)


def psnr(module, z: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        mse = (module.decode(z).clamp(0, 1) - x).square().mean().item()
    return 10 * math.log10(1 / mse)


def curve(module, x: torch.Tensor, lr: float, steps: tuple[int, ...], batch: int) -> list[dict]:
    """PSNR and CPU ms per tile after each of ``steps`` (cumulative), refining in batches of ``batch``."""
    module.eval()
    points = []
    start = time.process_time()
    with torch.no_grad():
        z = torch.cat([module.encode(x[i : i + batch]) for i in range(0, len(x), batch)])
    state = [(z[i : i + batch], torch.zeros_like(z[i : i + batch]), torch.zeros_like(z[i : i + batch]),
              torch.zeros(len(z[i : i + batch]))) for i in range(0, len(x), batch)]
    done = 0
    for target in steps:
        for _ in range(target - done):
            state = [refine_step(module.decode, x[k * batch : (k + 1) * batch], *s, lr=lr) for k, s in enumerate(state)]
        done = target
        cpu_ms = (time.process_time() - start) * 1000 / len(x)
        points.append({"steps": target, "psnr": psnr(module, torch.cat([s[0] for s in state]), x), "cpu_ms_per_tile": cpu_ms})
    return points


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", action="append", required=True, help="checkpoint (repeatable)")
    parser.add_argument("--data", default="data/dcss", help="data set whose validation tiles are refined")
    parser.add_argument("--lr", type=float, action="append", help=f"Adam step sizes to compare (default: {REFINE_LR})")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)), help="step counts to report")
    parser.add_argument("--batch", type=int, default=64, help="tiles per refinement batch")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--out", default="bench/results/refine.json")
    parser.add_argument("--plot", help="also draw PSNR against CPU ms per tile to this PNG")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = TileData.open(args.data)
    results = []
    for path in args.checkpoint:
        module, info = models.load_checkpoint(path)
        rgba = module.config.in_channels == 4
        tiles = data.split("val/rgba" if rgba and data.has_rgba else "val")
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div(255)
        for lr in args.lr or [REFINE_LR]:
            points = curve(module, x, lr, tuple(int(s) for s in args.steps.split(",")), args.batch)
            results.append({"checkpoint": str(path), "lr": lr, "tiles": len(x), "points": points})
            print(f"{Path(path).stem} lr {lr:g}: " + ", ".join(
                f"{p['steps']} steps {p['psnr']:.2f} dB {p['cpu_ms_per_tile']:.1f} ms" for p in points), flush=True)
    report = {"data": data.describe()["name"], "manifest_sha256": data.manifest_sha256, "threads": args.threads,
              "batch": args.batch, "torch": torch.__version__, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.plot:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    return 0


def plot(results: list[dict], path: str) -> None:
    """One line per checkpoint and step size: PSNR against cumulative CPU ms per tile, steps marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for result in results:
        xs = [p["cpu_ms_per_tile"] for p in result["points"]]
        ys = [p["psnr"] for p in result["points"]]
        ax.plot(xs, ys, marker="o", label=f"{Path(result['checkpoint']).stem}, lr {result['lr']:g}")
        for p in result["points"]:
            ax.annotate(str(p["steps"]), (p["cpu_ms_per_tile"], p["psnr"]), textcoords="offset points", xytext=(3, -10),
                        fontsize=7)
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("CPU ms per tile (encode + refinement steps, one thread)")
    ax.set_ylabel("PSNR on validation tiles (dB)")
    ax.set_title("Encode effort: refinement steps (numbers) against CPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
