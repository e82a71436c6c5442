"""`python -m tessera.training.train ...`: `tessera train` as a module, the way torchrun starts it

    torchrun --nproc_per_node=2 -m tessera.training.train --model dcae-t48 --out runs/ddp

The options are `tessera train`'s (``tessera.training.cli``); the loop is ``tessera.training.loop``.
"""

from __future__ import annotations

import argparse

from tessera.training.cli import add_train_arguments, friendly, run_train


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tessera.training.train", description="Train a tile autoencoder.")
    add_train_arguments(parser)
    return friendly("train", run_train)(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
