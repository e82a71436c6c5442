"""`tessera export onnx`: a checkpoint's encoder and/or decoder as ONNX files (model.onnx_export)."""

from __future__ import annotations

import argparse
import logging
import sys


def _export_onnx(args: argparse.Namespace) -> int:
    from tessera.model.checkpoint import CheckpointError

    try:
        from tessera.model.onnx_export import PARTS, export_checkpoint
    except ImportError as exc:
        print(f"tessera export onnx: needs the 'export' extra (pip install -e '.[export]'): {exc}", file=sys.stderr)
        return 1
    parts = PARTS if args.part == "both" else (args.part,)
    if not args.verbose:  # the exporter logs a warning per torchvision operator it cannot find, needed or not
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        written = export_checkpoint(args.checkpoint, parts, args.out)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"tessera export onnx: error: {exc}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("export", help="export a checkpoint for other runtimes (ONNX)")
    formats = parser.add_subparsers(dest="format", metavar="FORMAT")
    formats.required = True
    onnx = formats.add_parser("onnx", help="encoder and/or decoder as ONNX (float32 NCHW, dynamic batch, metadata)")
    onnx.add_argument("checkpoint", help=".safetensors checkpoint")
    onnx.add_argument("--part", choices=("encoder", "decoder", "both"), default="both", help="default: %(default)s")
    onnx.add_argument("--out", help="path prefix of the files, <out>.encoder.onnx / <out>.decoder.onnx "
                                    "(default: the checkpoint's path without .safetensors)")
    onnx.add_argument("--verbose", action="store_true", help="show the exporter's own warnings")
    onnx.set_defaults(func=_export_onnx)
