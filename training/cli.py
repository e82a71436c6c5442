"""`tessera data | train | plot | evaluate`: the training package's subcommands.

Each handler imports its module only when run, so `tessera --help` stays fast. Errors a user
can fix (a missing folder, a corrupt checkpoint, a non-finite loss) print one line and return 1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from tessera.training.config import FIELDS, SharpenConfig, TrainConfig


def friendly(command: str, handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Run ``handler``; a user-fixable error becomes one line on stderr and exit code 1."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from tessera.training.errors import DataError, TrainingError

        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            return handler(args)
        except (DataError, TrainingError, ValueError, FileNotFoundError) as exc:
            print(f"tessera {command}: error: {exc}", file=sys.stderr)
            return 1

    return run


# ---- tessera data


def _data_dcss(args: argparse.Namespace) -> int:
    from tessera.training.dcss import build_dcss

    manifest = build_dcss(args.out, deb=args.deb)
    _print_counts(args.out, manifest)
    return 0


def _data_corpus(args: argparse.Namespace) -> int:
    from tessera.training.corpus import build_corpus, deb_map, packages_named

    manifest = build_corpus(args.out, debs=deb_map(args.deb or []), packages=packages_named(args.package))
    for source in manifest["sources"]:
        c = source["counts"]
        print(f"  {source['name']}: {c['kept']} tiles ({c['train']} train, {c['val']} val) from {c['sheets']} "
              f"sheet(s); dropped {c['constant']} constant, {c['duplicate']} duplicate, "
              f"{c['duplicate_of_earlier_source']} already in an earlier source")
    _print_counts(args.out, manifest)
    return 0


def _data_folder(args: argparse.Namespace) -> int:
    from tessera.training.data import build_folder

    manifest = build_folder(args.path, args.out, tile_size=args.tile_size)
    _print_counts(args.out, manifest)
    return 0


def _print_counts(out: str, manifest: dict) -> None:
    c = manifest["counts"]
    print(
        f"{out}: {c['kept']} tiles ({c['train']} train, {c['val']} val) from {c['sheets']} sheet(s); "
        f"cut {c['cut']}, dropped {c['constant']} constant and "
        f"{c['duplicate'] + c.get('duplicate_of_earlier_source', 0)} duplicate"
    )


def _add_data(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="build a tile data set (train.npy, val.npy, manifest.json)")
    kinds = parser.add_subparsers(dest="source", metavar="SOURCE")
    kinds.required = True
    dcss = kinds.add_parser("dcss", help="Dungeon Crawl Stone Soup tiles from Debian's crawl-tiles-data (CC0)")
    dcss.add_argument("--out", default="data/dcss", help="output folder (default: %(default)s)")
    dcss.add_argument("--deb", help="use this crawl-tiles-data .deb instead of the installed package or a download")
    dcss.set_defaults(func=friendly("data dcss", _data_dcss))
    corpus = kinds.add_parser(
        "corpus", help="the multi-artist corpus: crawl-tiles-data, cataclysm-dda-data, crossfire-client-images, "
                       "supertux-data and angband-data, one validation split per tileset")
    corpus.add_argument("--out", default="data/corpus", help="output folder (default: %(default)s)")
    corpus.add_argument("--package", action="append", metavar="NAME",
                        help="only this package of the corpus (repeatable; kept in the corpus's order), e.g. the "
                             "first two for the corpus the checkpoints before crossfire-client-images were "
                             "trained on")
    corpus.add_argument("--deb", action="append", metavar="FILE",
                        help="use this .deb of one of the packages instead of the installed one or a download "
                             "(repeatable)")
    corpus.set_defaults(func=friendly("data corpus", _data_corpus))
    folder = kinds.add_parser("folder", help="any folder of images or sprite sheets, cut on a grid")
    folder.add_argument("path", help="folder of images (searched recursively)")
    folder.add_argument("--tile-size", type=int, default=32,
                        help="grid size in the images; tiles are resized to 32x32 (nearest)")
    folder.add_argument("--out", required=True, help="output folder")
    folder.set_defaults(func=friendly("data folder", _data_folder))


# ---- tessera train


def command_line(args: argparse.Namespace) -> str:
    """The train command as a user would type it, rebuilt from the parsed options (so it is the
    same however the command line was passed in)."""
    program = ["python", "-m", "tessera.training.train"] if Path(sys.argv[0]).name == "train.py" else ["tessera", "train"]
    words = []
    for name in FIELDS:
        value = getattr(args, name, None)
        if value is None or name == "command":
            continue
        if name in ("tensorboard", "progress"):
            words += [] if value else [f"--no-{name}"]
        elif isinstance(value, bool):
            words += [f"--{name.replace('_', '-')}"] if value else []
        else:
            words += [f"--{name.replace('_', '-')}", str(value)]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    prefix = f"torchrun --nproc_per_node={world} " if "RANK" in os.environ and world > 1 else ""
    return prefix + shlex.join([*program, *words])


def _default_text(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def add_options(parser: argparse.ArgumentParser, config: type) -> None:
    """A flag for every field of the dataclass ``config`` that has a help text, derived from the
    field: its name, type, choices, help and default. Every flag defaults to None, so that what
    was given can be told from what was not (a resume keeps the run's settings)."""
    for f in fields(config):
        meta = f.metadata
        if "help" not in meta:
            continue
        name = f.name.replace("_", "-")
        kind = meta.get("flag")
        if kind == "switch":
            parser.add_argument(f"--{name}", dest=f.name, action="store_true", default=None,
                                help=f"{meta['help']} (default: off)")
        elif kind == "negate":
            parser.add_argument(f"--no-{name}", dest=f.name, action="store_false", default=None,
                                help=f"no {meta['help']} (default: on)")
        else:
            type_name = str(f.type).split("|")[0].strip()
            parser.add_argument(f"--{name}", dest=f.name, type={"int": int, "float": float}.get(type_name, str),
                                choices=meta.get("choices"), default=None,
                                help=f"{meta['help']} (default: {meta.get('default_text') or _default_text(f.default)})")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `tessera train`, one per TrainConfig field."""
    add_options(parser, TrainConfig)


def config_from_args(args: argparse.Namespace) -> tuple[TrainConfig, frozenset[str]]:
    """The run's config and the names of the run-shaping settings given on the command line."""
    values = {k: getattr(args, k) for k in FIELDS if hasattr(args, k) and getattr(args, k) is not None}
    if not args.model and not args.resume:
        raise ValueError("--model is required: a preset name such as dcae-s48, or a dot-list string")
    if "out" not in values:
        if args.resume or not args.model or "=" in args.model:
            raise ValueError("--out is required with --resume or a dot-list --model")
        values["out"] = f"runs/{args.model}"
    given = frozenset(values) - {"resume", "out"}
    return TrainConfig(**{"model": None, **values, "command": command_line(args)}), given


def run_train(args: argparse.Namespace) -> int:
    from tessera.training.loop import train

    config, given = config_from_args(args)
    summary = train(config, given)
    if summary["stopped"] == "signal":
        print(f"stopped at {summary['inputs_seen']:,} inputs; continue with: tessera train --out {config.out} --resume",
              file=sys.stderr)
        return 130
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("train", help="train an autoencoder on a tile data set")
    add_train_arguments(parser)
    parser.set_defaults(func=friendly("train", run_train))


# ---- tessera plot / evaluate


def _plot(args: argparse.Namespace) -> int:
    from tessera.training.plots import plot_curves, plot_reconstructions

    folders = all(Path(run).is_dir() for run in args.runs)
    if args.curves is not None or folders:  # checkpoint files alone: the grid only
        curves = plot_curves(args.runs, args.curves or "curves.png", metric=args.metric)
        print(f"wrote {curves}")
    if args.data:
        recon = plot_reconstructions(args.runs, args.data, args.recon, count=args.tiles)
        print(f"wrote {recon}")
    return 0


def _add_plot(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("plot", help="validation curves of runs and a reconstruction grid")
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders (for curves) or checkpoints (grid only)")
    parser.add_argument("--curves", help="PNG of validation curves (default: curves.png when every RUN is a run "
                                         "folder; checkpoint files alone draw only the grid)")
    parser.add_argument("--metric", default="val_l1",
                        help="val.csv column of the curves: val_l1 (default), val_mse, val_psnr, or one source's, "
                             "e.g. dcss_psnr, dcss_l1, cdda-cuteclysm_ssim, dcss_alpha_iou")
    parser.add_argument("--data", help="data set folder: also draw reconstructions of its validation tiles")
    parser.add_argument("--recon", default="reconstructions.png", help="PNG of the grid (default: %(default)s)")
    parser.add_argument("--tiles", type=int, default=32, help="validation tiles in the grid (default: %(default)s)")
    parser.set_defaults(func=friendly("plot", _plot))


def _evaluate(args: argparse.Namespace) -> int:
    from tessera.training.evaluate import evaluate_checkpoints, write_report

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    rows = evaluate_checkpoints(args.checkpoints, args.data, batch_size=args.batch_size, device=args.device,
                                split=args.split, train_data=args.train_data)
    table = write_report(rows, args.out)
    print(table)
    print(f"wrote {args.out}.md and {args.out}.json")
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("evaluate", help="validation metrics and speed of checkpoints (markdown + JSON)")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=".safetensors files")
    parser.add_argument("--data", default="data/dcss", help="data set folder (default: %(default)s)")
    parser.add_argument("--out", default="evaluation", help="writes OUT.md and OUT.json (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="tiles per batch when timing (default: %(default)s)")
    parser.add_argument("--split", choices=["val", "train"], default="val",
                        help="tiles to measure: each source's validation split, or its training tiles, "
                             "to tell a model short of capacity from one short of data (default: %(default)s)")
    parser.add_argument("--train-data", action="append", default=[], metavar="FOLDER",
                        help="a data set folder to look in for a model's training data, on whose training split "
                             "its PCA yardstick is fitted (repeatable; --data and the folder the model's record "
                             "names are looked in too; when none holds it, the PCA is fitted on --data's)")
    parser.add_argument("--device", default="cpu", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.set_defaults(func=friendly("evaluate", _evaluate))


def _latent_stats(args: argparse.Namespace) -> int:
    from tessera.training.latent_stats import add_latent_stats

    for checkpoint in args.checkpoints:
        stats = add_latent_stats(checkpoint, args.data)
        print(f"{checkpoint}: latents mean {stats['mean']:.4f}, std {stats['std']:.4f} over {stats['tiles']} tiles "
              f"of {stats['data']}; scaling_factor {stats['scaling_factor']:.4f}")
    return 0


def _add_latent_stats(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("latent-stats", help="store the latents' mean and std over a data set in checkpoints "
                                                 "(diffusers' scaling_factor)")
    parser.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT", help=".safetensors files, rewritten in place")
    parser.add_argument("--data", default="data/corpus", help="data set whose training split is encoded "
                                                              "(default: %(default)s)")
    parser.set_defaults(func=friendly("latent-stats", _latent_stats))


def _sharpen(args: argparse.Namespace) -> int:
    from tessera.training.sharpen import sharpen

    values = {f.name: getattr(args, f.name) for f in fields(SharpenConfig) if getattr(args, f.name, None) is not None}
    config = SharpenConfig(**values)
    record = sharpen(config, command=shlex.join(["tessera", "sharpen", *sys.argv[2:]]))
    print(f"wrote {config.out}/last.safetensors: val PSNR {record['metrics']['psnr']:.2f} dB, sharpness "
          f"{record['metrics']['sharpness']:.3f} (base {record['base']['psnr']:.2f} dB, {record['base']['sharpness']:.3f})")
    return 0


def _add_sharpen(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("sharpen", help="fine-tune a sharp decoder for a model's latents (frozen encoder, "
                                            "decoder head with an adversarial loss)")
    parser.add_argument("checkpoint", help="the model whose latents the sharp decoder decodes")
    add_options(parser, SharpenConfig)
    parser.set_defaults(func=friendly("sharpen", _sharpen))


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add data, train, sharpen, plot, evaluate and latent-stats to the `tessera` command line."""
    _add_data(subparsers)
    _add_train(subparsers)
    _add_sharpen(subparsers)
    _add_plot(subparsers)
    _add_evaluate(subparsers)
    _add_latent_stats(subparsers)
