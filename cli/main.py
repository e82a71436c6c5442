"""The `tessera` command line: one entry point, subcommands registered by the packages that own them.

Each owner module exposes ``register(subparsers)`` which adds its subcommands and sets
``func`` on them; the function returns an exit code. Modules are imported lazily per
subcommand group so that ``tessera --help`` stays fast and a missing optional dependency of
one group never breaks another: the client's commands need only the base install, and a
command whose extra is missing says which to install.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys

# module that registers them -> (subcommands it owns, the extra that installs what they need)
GROUPS = {
    "tessera.training.cli": (("data", "train", "plot", "evaluate", "latent-stats"), "train"),
    "tessera.service.runtime.cli": (("serve",), "serve"),
    "tessera.client.cli": (("encode", "decode", "roundtrip", "models"), None),
    "tessera.model.cli": (("export",), "export"),
}


def build_parser(modules: list[str] | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tessera", description="Tessera: 32x32 game tiles <-> DC-AE latents.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in modules or list(GROUPS):
        try:
            importlib.import_module(name).register(sub)
        except ModuleNotFoundError as exc:  # an optional dependency of the group is not installed
            if exc.name and (exc.name == name or name.startswith(exc.name + ".")):
                raise
            commands, extra = GROUPS[name]
            for command in commands:
                missing = sub.add_parser(command, help=f"(needs pip install 'tessera[{extra}]')", add_help=False)
                missing.add_argument("rest", nargs=argparse.REMAINDER)
                missing.set_defaults(func=functools.partial(_needs, command, exc.name, extra))
    return parser


def _needs(command: str, dependency: str, extra: str | None, args: argparse.Namespace) -> int:
    print(f"tessera: error: `tessera {command}` needs {dependency}, which is not installed: "
          f"pip install 'tessera[{extra}]'", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # import only the group that owns the subcommand when we can tell which one it is
    modules = None
    if argv and not argv[0].startswith("-"):
        modules = [m for m, (cmds, _) in GROUPS.items() if argv[0] in cmds] or None
    parser = build_parser(modules)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
