"""Logging set-up shared by the stages' command lines."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    """Progress lines on stderr; httpx's one line per request would cost the load generator CPU."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
