"""Training cost per input of model layouts and execution settings: process CPU seconds per
training input (forward, backward and AdamW step on random tiles), one torch thread unless told.

    python -m bench.train_speed                                   # the decoder study's layouts, eager and channels-last
    python -m bench.train_speed --models dcae-s48-f8c4 --modes eager,compile --batches 32,64,128

Prints one line per point and writes bench/results/train-speed.json. CPU time, not wall time, so
that other work on the machine changes the numbers little; compare points of one run.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tessera import model as models
from tessera.model.presets import f8_with_decoder

MODELS = ("dcae-s48-f8c4", "dcae-s48-f8c4-d32", "dcae-s12-f8c16", "dcae-s12-f8c16-d32")
# the decoder study's ratio-48 rows (docs/training.md): the f8 encoder with decoders that differ at
# 32x32 and 16x16 (widths, blocks per stage) and in their output head
STUDY = {
    "f8 (pixel-shuffle head)": "dcae-s48-f8c4",
    "d16x1": f8_with_decoder(4, [16, 32, 64, 128], [1, 2, 3, 2]),
    "d32x1": "dcae-s48-f8c4-d32",
    "d32x1 (up-sample + conv)": f8_with_decoder(4, [32, 32, 64, 128], [1, 1, 3, 2], "InterpolateConv"),
    "d32x2": f8_with_decoder(4, [32, 32, 64, 128], [2, 2, 3, 2]),
    "d32, 64 at 16x16": f8_with_decoder(4, [32, 64, 64, 128], [1, 2, 3, 2]),
}
MODES = ("eager", "channels-last", "compile")
WARM_STEPS, STEPS = 3, 25


def inputs_per_cpu_second(spec: str, mode: str, batch: int) -> dict:
    torch.manual_seed(0)
    net = models.build(spec)
    x = torch.rand(batch, net.config.in_channels, 32, 32)
    if mode in ("channels-last", "compile"):
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3)
    call = torch.compile(net) if mode == "compile" else net

    def step() -> None:
        loss = F.l1_loss(call(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    start = time.process_time()
    for _ in range(WARM_STEPS):
        step()
    warm = time.process_time() - start
    start = time.process_time()
    for _ in range(STEPS):
        step()
    cpu = time.process_time() - start
    return {"model": spec, "mode": mode, "batch": batch, "params": sum(p.numel() for p in net.parameters()),
            "inputs_per_cpu_s": STEPS * batch / cpu, "first_steps_cpu_s": warm}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="presets, comma-separated; 'study': the decoder "
                                                                    "study's layouts")
    parser.add_argument("--modes", default="eager,channels-last", help=f"of {', '.join(MODES)}, comma-separated")
    parser.add_argument("--batches", default="32", help="batch sizes, comma-separated")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="bench/results/train-speed.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    points = []
    specs = STUDY if args.models == "study" else {name: name for name in args.models.split(",")}
    for name, spec in specs.items():
        for mode in args.modes.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                point = {"name": name, **inputs_per_cpu_second(spec, mode, batch)}
                points.append(point)
                print(f"{name:24} {mode:14} batch {batch:4}: {point['inputs_per_cpu_s']:7.1f} inputs per CPU-second "
                      f"(first {WARM_STEPS} steps {point['first_steps_cpu_s']:.1f} CPU-s)", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "torch": torch.__version__, "points": points},
                                         indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
