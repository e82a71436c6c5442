"""Raw model speed: encode and decode tiles/s in-process, no HTTP and no queue in between.

This is the limit the service is measured against, in two forms per point:

- ``eager``: the model module itself on float tensors prepared in advance;
- ``trace``: the call the service makes (``tessera.service.batching.graphs``, ``TESSERA_GRAPH=trace``): uint8
  tiles (or float32 latents) as numpy arrays in, numpy arrays out, through the frozen
  TorchScript graph, conversions included.

The report compares the service with the faster of the two. Each point is the median of
``torch.utils.benchmark.Timer.blocked_autorange``. CPU runs fp32 at every thread count asked
for; CUDA (when present) runs fp32, fp16 and bf16.

``measure_model`` also knows a third form, ``compile`` (``torch.compile`` of the module's encode
and decode, static shapes: compiled anew at each batch size), and channels-last weights and
inputs; ``bench.gpu_check`` asks for them. Every row records its first call (for ``compile``:
that batch size's compilation) and, on CUDA, the most GPU memory allocated during the point.

    python -m bench.raw --threads 1,2 --out bench/results/raw.json
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable
from pathlib import Path

from bench import results
from bench.console import setup_logging
from bench.machine import describe
from bench.procs import machine_busy_s

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 4, 16, 32, 64, 256)  # 32: the mean batch of 64 closed-loop clients
CUDA_BATCH_SIZES = (64, 256, 1024, 4096)
CUDA_DTYPES = ("float32", "float16", "bfloat16")
GRAPHS = ("eager", "trace")


def _timed(fn, threads: int, min_run_time: float):
    from torch.utils.benchmark import Timer

    return Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads).blocked_autorange(min_run_time=min_run_time)


def measure_model(
    name: str, path: Path, *, device: str, dtype_name: str, threads: int, batch_sizes, min_run_time: float,
    ops=("encode", "decode"), graphs=GRAPHS, channels_last: bool = False, compile_backend: str = "inductor",
    deadline: float | None = None, on_row: Callable[[dict], None] | None = None,
) -> list[dict]:
    """Encode and decode tiles/s of one checkpoint at each batch size, in each form of ``graphs``
    ("eager", "trace", "compile").

    ``channels_last`` puts the weights and the float inputs in channels-last memory format (the
    eager and compiled forms; the traced call is the service's, which hands the network NCHW
    input itself, so it gives no rows then). No point starts after ``deadline``
    (``time.monotonic()``); ``on_row`` gets each row as soon as it is measured.
    """
    import numpy as np
    import torch

    dtype = getattr(torch, dtype_name)
    cuda = device.startswith("cuda")
    layout = torch.channels_last if channels_last else torch.contiguous_format
    module, traced, compiled = _load_forms(name, path, device, dtype, channels_last, threads, graphs, compile_backend)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(0)
    rows = []
    for batch in batch_sizes:
        calls = _batch_calls(module, traced, compiled, batch, device, dtype, layout, rng, sync)
        for (graph, op), fn in calls.items():
            if op not in ops or graph not in graphs:
                continue
            if deadline is not None and time.monotonic() > deadline:
                logger.warning("%s: out of time, %s %s at batch %d and after not measured", name, graph, op, batch)
                return rows
            row = {
                "model": name, "op": op, "graph": graph, "device": device, "dtype": dtype_name, "threads": threads,
                "layout": "channels_last" if channels_last else "contiguous",
                "batch": batch, **_measure_point(fn, batch, device, threads, min_run_time, sync),
            }
            logger.info("%s %s %s %s/%s %s threads=%d batch=%d: %.0f tiles/s", name, op, graph, device, dtype_name,
                        row["layout"], threads, batch, row["tiles_per_s"])
            rows.append(row)
            if on_row is not None:
                on_row(row)
    return rows


def _load_forms(
    name: str, path: Path, device: str, dtype, channels_last: bool, threads: int, graphs, compile_backend: str
):
    """The checkpoint's module (in channels-last memory format or not), the service's traced calls
    (None when not asked for, in channels-last, or when the service runs eager) and the compiled
    encode and decode ({} when not asked for)."""
    import torch

    from tessera import model
    from tessera.service.batching.graphs import make_calls

    module, _ = model.load_checkpoint(path, device=device, dtype=dtype)
    module.eval()
    if channels_last:
        module.to(memory_format=torch.channels_last)
    torch.set_num_threads(threads)  # before tracing: the graph's kernels are chosen for it
    traced = make_calls(module, device, dtype, "trace", name) if "trace" in graphs and not channels_last else None
    if traced is not None and traced[2] != "trace":
        traced = None  # it runs eager in the server too (make_calls logged why): no trace rows
    compiled = {}
    if "compile" in graphs:  # static shapes (dynamic ones took dynamo 10x longer); each batch size compiles at its first call
        compiled = {op: torch.compile(getattr(module, op), dynamic=False, backend=compile_backend) for op in ("encode", "decode")}
    return module, traced, compiled


def _batch_calls(module, traced, compiled: dict, batch: int, device: str, dtype, layout, rng, sync) -> dict:
    """One call per (graph, op) on inputs of ``batch`` tiles prepared in advance."""
    import numpy as np
    import torch

    channels = module.config.in_channels  # 3, or 4 for RGBA models
    x = torch.rand(batch, channels, 32, 32, device=device, dtype=dtype).contiguous(memory_format=layout)  # (B, C, 32, 32)
    with torch.inference_mode():
        z = module.encode(x)  # (B, *latent_shape)
    tiles = rng.integers(0, 256, (batch, 32, 32, channels), dtype=np.uint8)
    latents = z.float().cpu().numpy()

    def on_device(call, arg):
        def run():
            with torch.inference_mode():
                call(arg)
            sync()
        return run

    calls = {("eager", "encode"): on_device(module.encode, x), ("eager", "decode"): on_device(module.decode, z)}
    if traced is not None:  # numpy in, numpy out: the result is on the host, no sync needed
        calls[("trace", "encode")] = lambda tiles=tiles: traced[0](tiles)
        calls[("trace", "decode")] = lambda latents=latents: traced[1](latents)
    if compiled:
        calls[("compile", "encode")] = on_device(compiled["encode"], x)
        calls[("compile", "decode")] = on_device(compiled["decode"], z)
    return calls


def _measure_point(fn, batch: int, device: str, threads: int, min_run_time: float, sync) -> dict:
    """The first call of ``fn`` and then its timing; on CUDA, the GPU memory peak meanwhile."""
    import torch

    cuda = device.startswith("cuda")
    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
    first = time.perf_counter()
    fn()
    first = time.perf_counter() - first
    busy, own, wall = machine_busy_s(), time.process_time(), time.perf_counter()
    m = _timed(fn, threads, min_run_time)
    busy_after, own, wall = machine_busy_s(), time.process_time() - own, time.perf_counter() - wall
    return {
        "median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times) * m.number_per_run,
        "tiles_per_s": batch / m.median,
        "first_call_s": first,  # for "compile", this batch size's compilation
        "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if cuda else None,
        # cores' worth of CPU other processes used meanwhile: well above 0, the point is low
        "other_cores": None if busy is None or busy_after is None else max(0.0, busy_after - busy - own) / wall,
    }


def run(
    checkpoints: tuple[Path, ...], threads: list[int], batch_sizes, min_run_time: float, ops=("encode", "decode"), graphs=GRAPHS
) -> dict:
    import torch

    from tessera.service.runtime.malloc_tuning import keep_freed_memory
    from tessera.service.batching.registry import find_checkpoints

    keep_freed_memory()  # as the server does: every process reuses its activation memory
    files = find_checkpoints(checkpoints)
    rows = []
    for name, path in files.items():
        for count in threads:
            rows += measure_model(name, path, device="cpu", dtype_name="float32", threads=count,
                                  batch_sizes=batch_sizes, min_run_time=min_run_time, ops=ops, graphs=graphs)
        if torch.cuda.is_available():
            for dtype_name in CUDA_DTYPES:
                rows += measure_model(name, path, device="cuda", dtype_name=dtype_name, threads=1,
                                      batch_sizes=CUDA_BATCH_SIZES, min_run_time=min_run_time, ops=ops, graphs=graphs)
    return {"machine": describe(), "models": {name: str(path) for name, path in files.items()}, "points": rows}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.raw", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default="checkpoints", help="folders or .safetensors files, comma-separated")
    parser.add_argument("--threads", default="1,2", help="torch intra-op thread counts to measure, comma-separated")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--ops", default="encode,decode", help="encode and/or decode")
    parser.add_argument("--graphs", default=",".join(GRAPHS), help="eager and/or trace")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds of timing per point")
    parser.add_argument("--out", type=Path, default=results.RESULTS / "raw.json")
    args = parser.parse_args(argv)
    setup_logging()
    data = run(
        tuple(Path(p) for p in args.checkpoints.split(",")),
        [int(t) for t in args.threads.split(",")],
        [int(b) for b in args.batch_sizes.split(",")],
        args.min_run_time,
        tuple(args.ops.split(",")),
        tuple(args.graphs.split(",")),
    )
    results.save(args.out, data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
