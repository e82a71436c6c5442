"""``tessera serve``: run the HTTP service under uvicorn.

Every setting (``tessera.service.runtime.settings``) is a ``TESSERA_*`` variable and a flag of the same name
(``max_tiles_per_request``: ``TESSERA_MAX_TILES_PER_REQUEST``, ``--max-tiles-per-request``); a
flag overrides the variable. Both are read and checked the same way.
"""

from __future__ import annotations

import argparse
import logging
import sys


def flags() -> dict[str, str]:
    """Flag name -> help, one per ``Settings`` field, both derived from the field (its description
    and default); the value is passed on as text and checked as the environment's is."""
    from tessera.service.runtime.settings import Settings, shown_default

    return {
        name: f"{field.description} (TESSERA_{name.upper()}, default: {shown_default(field)})"
        for name, field in Settings.model_fields.items()
    }


def register(subparsers) -> None:
    options = flags()  # needs the serve extra: fails before anything is registered
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service",
        description="Serve /v1/encode and /v1/decode with dynamic batching. Flags override TESSERA_* variables.",
    )
    for name, help_text in options.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, default=None, metavar="VALUE",
                            help=help_text.replace("%", "%%"))
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log every request")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from tessera.service.runtime.settings import Settings

    overrides = {name: getattr(args, name) for name in flags() if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"tessera serve: invalid settings: {problems}", file=sys.stderr)
        return 2

    import uvicorn

    from tessera.model import CheckpointError
    from tessera.service.http.app import create_app
    from tessera.service.http.auth import load_keys
    from tessera.service.http.limits import HttpLimits, guarded_protocol
    from tessera.service.batching.registry import RegistryError, load_registry
    from tessera.service.runtime.shutdown import DrainingServer

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # load before uvicorn starts, so that a bad checkpoint or key file is one line, not a traceback
        load_keys(settings.api_keys)  # a bad key file is reported before the models load
        registry = load_registry(settings)
        app = create_app(settings, registry=registry)
    except (RegistryError, CheckpointError, ValueError) as exc:
        print(f"tessera serve: {' '.join(str(exc).split())}", file=sys.stderr)  # one line, whatever the message
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_level=args.log_level,
        access_log=args.access_log,
        timeout_graceful_shutdown=settings.shutdown_grace_s,
        timeout_keep_alive=settings.keep_alive_s,
        http=guarded_protocol(HttpLimits(settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s,
                                         settings.min_body_bytes_per_s, settings.body_grace_s)),
    )
    server = DrainingServer(config, app, settings)
    server.run()
    return 0 if server.started else 1
