"""The `tessera` command line: one entry point, subcommands registered by the packages that own them.

Each owner module exposes ``register(subparsers)`` which adds its subcommands and sets
``func`` on them; the function returns an exit code. Modules are imported lazily per
subcommand group so that ``tessera --help`` stays fast and a missing optional dependency of
one group never breaks another.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# module that registers them -> subcommands it owns
GROUPS = {
    "training.cli": ("data", "train", "plot", "evaluate", "latent-stats"),
    "service.runtime.cli": ("serve",),
    "client.cli": ("encode", "decode", "roundtrip", "models"),
    "model.cli": ("export",),
}


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera: 32x32 game tiles <-> DC-AE latents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in modules or list(GROUPS):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a group not built yet or an optional dependency missing
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                continue
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # import only the group that owns the subcommand when we can tell which one it is
    modules = None
    if argv and not argv[0].startswith("-"):
        modules = [m for m, cmds in GROUPS.items() if argv[0] in cmds] or None
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
