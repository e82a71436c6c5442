"""An event sink that keeps every event (``tessera.service.runtime.events``), for tests to read what the
service did instead of counting it a second time."""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # the EventSink method's name
    fields: dict[str, Any]

    def matches(self, **wanted: Any) -> bool:
        return all(self.fields.get(k) == v for k, v in wanted.items())


class RecordingSink:
    """Every event in order; ``of(kind, **fields)`` picks some, the properties sum them up."""

    def __init__(self) -> None:
        self.log: list[Event] = []
        self._lock = threading.Lock()

    def _add(self, kind: str, **fields: Any) -> None:
        with self._lock:
            self.log.append(Event(kind, fields))

    # -- EventSink ---------------------------------------------------------------------------

    def request_answered(self, endpoint: str, status: int, seconds: float) -> None:
        self._add("request_answered", endpoint=endpoint, status=status, seconds=seconds)

    def queue_depth(self, model: str, op: str, tiles: int) -> None:
        self._add("queue_depth", model=model, op=op, tiles=tiles)

    def batch_formed(self, model: str, op: str, tiles: int, waited_s: Sequence[float]) -> None:
        self._add("batch_formed", model=model, op=op, tiles=tiles, waited_s=list(waited_s))

    def batch_computed(self, model: str, op: str, tiles: int, unique: int, seconds: float) -> None:
        self._add("batch_computed", model=model, op=op, tiles=tiles, unique=unique, seconds=seconds)

    def batch_failed(self, model: str, op: str, tiles: int, error: str) -> None:
        self._add("batch_failed", model=model, op=op, tiles=tiles, error=error)

    def tiles_rejected(self, model: str, op: str, reason: str, tiles: int) -> None:
        self._add("tiles_rejected", model=model, op=op, reason=reason, tiles=tiles)

    def tiles_from_cache(self, model: str, tiles: int, op: str = "encode") -> None:
        self._add("tiles_from_cache", model=model, tiles=tiles, op=op)

    def tiles_refined(self, model: str, tiles: int, asked: int, done: int) -> None:
        self._add("tiles_refined", model=model, tiles=tiles, asked=asked, done=done)

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        self._add("cache_lookup", backend=backend, hits=hits, misses=misses)

    def cache_error(self, backend: str, op: str) -> None:
        self._add("cache_error", backend=backend, op=op)

    def cache_skipped(self, backend: str, op: str) -> None:
        self._add("cache_skipped", backend=backend, op=op)

    # -- reading -------------------------------------------------------------------------------

    def of(self, kind: str, **fields: Any) -> list[dict[str, Any]]:
        """The fields of every ``kind`` event whose fields include ``fields``."""
        with self._lock:
            return [e.fields for e in self.log if e.kind == kind and e.matches(**fields)]

    def count(self, kind: str, **fields: Any) -> int:
        return len(self.of(kind, **fields))

    def total(self, kind: str, field: str, **fields: Any) -> int:
        """Sum of ``field`` over the matching events."""
        return sum(e[field] for e in self.of(kind, **fields))

    def batch_sizes(self, **fields: Any) -> collections.Counter:
        """Tiles per computed batch -> how many batches."""
        return collections.Counter(e["tiles"] for e in self.of("batch_computed", **fields))

    def rejected(self, reason: str, **fields: Any) -> int:
        """Tiles rejected for ``reason`` (``error``: of failed batches)."""
        if reason == "error":
            return self.total("batch_failed", "tiles", **fields)
        return self.total("tiles_rejected", "tiles", reason=reason, **fields)
