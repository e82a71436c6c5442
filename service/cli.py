"""``tessera serve``: run the HTTP service under uvicorn.

Flags override the matching ``TESSERA_*`` variables; every other setting comes from the
environment (see ``service.settings``).
"""

from __future__ import annotations

import argparse
import logging
import sys

# flag -> Settings field; None means "not given, keep the environment's value"
FLAGS = {
    "host": str,
    "port": int,
    "checkpoints": str,
    "default_model": str,
    "device": str,
    "cuda_dtype": str,
    "graph": str,
    "max_batch_tiles": int,
    "max_wait_ms": float,
    "max_queue_tiles": int,
    "request_timeout_s": float,
    "torch_threads": int,
    "redis_url": str,
}
HELP = {
    "host": "address to listen on (TESSERA_HOST, default 127.0.0.1)",
    "port": "port to listen on (TESSERA_PORT, default 8000)",
    "checkpoints": "checkpoint folders or .safetensors files, comma-separated (TESSERA_CHECKPOINTS, default checkpoints)",
    "default_model": "model for requests that name none (TESSERA_DEFAULT_MODEL)",
    "device": "auto, cpu, cuda or cuda:N (TESSERA_DEVICE, default auto)",
    "cuda_dtype": "fp32, fp16 or bf16 on CUDA (TESSERA_CUDA_DTYPE, default fp32)",
    "graph": "trace (TorchScript graphs checked against eager) or eager (TESSERA_GRAPH, default trace)",
    "max_batch_tiles": "most tiles per model call (TESSERA_MAX_BATCH_TILES, default 64)",
    "max_wait_ms": "batch window after its first tile (TESSERA_MAX_WAIT_MS, default 5)",
    "max_queue_tiles": "most tiles waiting per model and op; beyond: 503 (TESSERA_MAX_QUEUE_TILES, default 4096)",
    "request_timeout_s": "504 after this (TESSERA_REQUEST_TIMEOUT_S, default 30)",
    "torch_threads": "torch intra-op threads (TESSERA_TORCH_THREADS)",
    "redis_url": "Redis for the latent cache, redis://host:port/db (TESSERA_REDIS_URL)",
}


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the HTTP service",
        description="Serve /v1/encode and /v1/decode with dynamic batching. Flags override TESSERA_* variables.",
    )
    for name, kind in FLAGS.items():
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=HELP[name])
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--no-access-log", dest="access_log", action="store_false", help="do not log every request")
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from service.settings import Settings

    overrides = {name: getattr(args, name) for name in FLAGS if getattr(args, name) is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        print(f"tessera serve: invalid settings: {problems}", file=sys.stderr)
        return 2

    import uvicorn

    from model import CheckpointError
    from service.app import create_app
    from service.auth import load_keys
    from service.http_limits import HttpLimits, guarded_protocol
    from service.registry import RegistryError, load_registry
    from service.shutdown import DrainingServer

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
        http=guarded_protocol(HttpLimits(settings.max_header_bytes, settings.header_timeout_s, settings.body_timeout_s)),
    )
    server = DrainingServer(config, app, settings)
    server.run()
    return 0 if server.started else 1
