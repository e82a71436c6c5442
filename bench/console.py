"""What the stages' command lines share: logging, and the command line of a stage that serves one
checkpoint under a plan (``--checkpoint --threads --quick --out --logs``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from tessera.service.runtime.settings import DEFAULT_MODEL


def setup_logging() -> None:
    """Progress lines on stderr; httpx's one line per request would cost the load generator CPU."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def served_stage(argv: list[str] | None, prog: str, doc: str, out: Path, plan, quick, run: Callable[[Path, object, Path], dict]) -> int:
    """Parse a served stage's command line, run ``run(checkpoint, plan, logs)`` (``quick``
    with --quick, the plan's thread count from --threads) and save its results to --out."""
    from bench import results

    parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path(f"checkpoints/{DEFAULT_MODEL}.safetensors"), help="the model to serve")
    parser.add_argument("--threads", type=int, default=plan.threads, help="TESSERA_TORCH_THREADS of the server")
    parser.add_argument("--quick", action="store_true", help="a few seconds per point, to check the harness")
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--logs", type=Path, default=Path("bench/logs"), help="server logs go here")
    args = parser.parse_args(argv)
    setup_logging()
    results.save(args.out, run(args.checkpoint, dataclasses.replace(quick if args.quick else plan, threads=args.threads), args.logs))
    return 0
