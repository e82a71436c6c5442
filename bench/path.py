"""What each step of the encode request path costs on its own, in-process, without HTTP.

decode body (npy or PNG sheet) -> hash tiles -> cache lookup -> model call -> cache store ->
encode the answer (npy or JSON). Each step is timed with ``timeit`` (median of repeats) on
requests of 1, 64 and 1,024 distinct tiles, so the load results can be read against it.

    python -m bench.path --out bench/results/path.json
"""

from __future__ import annotations

import argparse
import io
import logging
import timeit
from pathlib import Path

import numpy as np

from bench import results
from bench.bodies import sheet_png
from bench.console import setup_logging
from bench.machine import describe
from tessera.service.runtime.settings import DEFAULT_MODEL

logger = logging.getLogger(__name__)

SIZES = (1, 64, 1024)
GRIDS = {1: (1, 1), 64: (8, 8), 1024: (32, 32)}


def per_call_s(fn, min_time_s: float) -> float:
    """Median seconds of one ``fn()`` over at least three ``timeit`` blocks of about 20 ms."""
    timer = timeit.Timer(fn)
    per_call = timer.timeit(number=1)  # also the warm-up
    number = max(1, round(0.02 / per_call))
    repeat = max(3, round(min_time_s / (number * per_call)))
    return float(np.median(timer.repeat(repeat=repeat, number=number))) / number


def drive(coro):
    """Run a coroutine that never suspends (the in-process cache) to its result."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the coroutine suspended; drive() only runs coroutines that do not")


def measure(checkpoint: Path, threads: int, min_time_s: float) -> list[dict]:
    import torch
    from fastapi.responses import JSONResponse

    from tessera import model
    from tessera.service.pipeline import codecs
    from tessera.service.pipeline.cache import MemoryLatentCache, tile_hashes
    from tessera.service.batching.graphs import make_calls
    from tessera.service.pipeline.npy import npy_bytes

    from tessera.service.runtime.malloc_tuning import keep_freed_memory

    keep_freed_memory()  # as the server does
    torch.set_num_threads(threads)
    module, info = model.load_checkpoint(checkpoint, device="cpu", dtype=torch.float32)
    module.eval()
    encode, _, _ = make_calls(module, "cpu", torch.float32, "trace", checkpoint.stem)  # as the server runs it
    limits = codecs.Limits(max_tiles=4096, max_pixels=16 * 1024 * 1024)
    key = info["weights_sha256"]
    rows = []
    for n in SIZES:
        tiles = np.random.default_rng(n).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        npy = io.BytesIO()
        np.save(npy, tiles)
        npy_body = npy.getvalue()
        png_body = sheet_png(*GRIDS[n], seed=n)
        hashes = tile_hashes(tiles)
        latents = encode(tiles[: min(n, 64)])
        latents = np.resize(latents, (n, *latents.shape[1:]))
        full = MemoryLatentCache(max_bytes=1 << 30)
        drive(full.put_many(key, dict(zip(hashes, latents))))

        def store():
            drive(MemoryLatentCache(max_bytes=1 << 30).put_many(key, dict(zip(hashes, latents))))

        steps = {
            "read npy body": lambda: codecs.tiles_from_npy(npy_body, limits),
            "read PNG sheet": lambda: codecs.tiles_from_image(png_body, limits),
            "hash tiles (sha256)": lambda: tile_hashes(tiles),
            "cache lookup, all miss": lambda: drive(MemoryLatentCache(max_bytes=1 << 30).get_many(key, hashes)),
            "cache lookup, all hit": lambda: drive(full.get_many(key, hashes)),
            "cache store": store,
            "model call (batches of 64)": lambda: [encode(tiles[i : i + 64]) for i in range(0, n, 64)],
            "answer as npy": lambda: npy_bytes(latents),
            "answer as JSON": lambda: JSONResponse({"latents": latents.tolist()}).body,
        }
        for step, fn in steps.items():
            budget = min_time_s * (3 if step.startswith("model") else 1)
            seconds = per_call_s(fn, budget)
            rows.append({"tiles": n, "step": step, "us_per_request": seconds * 1e6, "us_per_tile": seconds * 1e6 / n})
            logger.info("%5d tiles  %-28s %10.1f us", n, step, seconds * 1e6)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.path", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(f"checkpoints/{DEFAULT_MODEL}.safetensors"))
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads for the model call")
    parser.add_argument("--min-time", type=float, default=0.3, help="seconds of timing per step")
    parser.add_argument("--out", type=Path, default=results.RESULTS / "path.json")
    args = parser.parse_args(argv)
    setup_logging()
    rows = measure(args.checkpoint, args.threads, args.min_time)
    results.save(args.out, {"machine": describe(), "model": args.checkpoint.stem, "threads": args.threads, "steps": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
