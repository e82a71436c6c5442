"""API keys: with ``TESSERA_API_KEYS`` set, ``/v1/*`` (and ``/metrics`` unless
``TESSERA_METRICS_PUBLIC``) need ``Authorization: Bearer <key>``; ``/healthz`` and ``/readyz``
stay open.

    TESSERA_API_KEYS=key-one,key-two        # keys themselves, comma-separated
    TESSERA_API_KEYS=@/run/secrets/keys     # a file, one key per line, '#' comments
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

from tessera.service.errors import Unauthorized


def load_keys(setting: str | None) -> tuple[str, ...]:
    """The keys a ``TESSERA_API_KEYS`` value names; () when unset (no authentication)."""
    if setting is None or not setting.strip():
        return ()
    if setting.startswith("@"):
        path = Path(setting[1:])
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ValueError(f"TESSERA_API_KEYS file {str(path)!r} cannot be read: {exc.strerror}") from None
        keys = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
        where = f"file {str(path)!r}"
    else:
        keys = [part.strip() for part in setting.split(",") if part.strip()]
        where = "value"
    if not keys:
        raise ValueError(f"TESSERA_API_KEYS {where} holds no key; unset it to disable authentication")
    return tuple(keys)


class KeyCheck:
    """Constant-time check of a bearer token against the configured keys."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self._digests = tuple(hashlib.sha256(key.encode()).digest() for key in keys)

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def check(self, authorization: str | None) -> None:
        """Raise ``Unauthorized`` unless ``authorization`` is ``Bearer <a known key>``."""
        if not self.enabled:
            return
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized(
                "this server needs an API key: send the header 'Authorization: Bearer <key>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        presented = hashlib.sha256(token.strip().encode()).digest()
        matched = False
        for digest in self._digests:  # compare with every key: timing says nothing about which
            matched |= hmac.compare_digest(presented, digest)
        if not matched:
            raise Unauthorized("unknown API key; check the key you send as 'Authorization: Bearer <key>'",
                               headers={"WWW-Authenticate": "Bearer"})
