"""Two processes under torchrun on CPU (gloo): DDP training with rank-0 checkpoints."""

from __future__ import annotations

import os
import subprocess
import sys

from tessera import model


def test_two_process_torchrun_on_cpu(tiny_data, tmp_path):
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "tessera.training.train", "--model", "dcae-t48", "--data", str(tiny_data), "--out", str(out),
        "--max-inputs", "256", "--batch-size", "16", "--eval-every", "128", "--log-every", "4",
        "--device", "cpu", "--threads", "1", "--no-progress", "--no-tensorboard",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    _, info = model.load_checkpoint(out / "last.safetensors")
    record = info["training"]
    assert record["world_size"] == 2 and record["inputs_seen"] == 256
    assert record["command"].startswith("torchrun --nproc_per_node=2 python -m tessera.training.train --model dcae-t48")
    val = (out / "val.csv").read_text().splitlines()
    assert len(val) == 3  # header + one row per validation, written once (rank 0)
    assert done.stdout.count("val L1") + done.stderr.count("val L1") == 2
