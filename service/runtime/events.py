"""One way for "something happened" to leave the service: an ``EventSink``.

The request middleware, the batchers, the latent cache and the pipeline report what they did
to the sink they were given, and nothing else counts: ``tessera.service.runtime.metrics.Metrics`` turns the
events into Prometheus series, tests record them (``tessera.testing.events.RecordingSink``),
and ``Fanout`` hands each event to several sinks. Sinks are called on the event loop's thread.

Labels: ``model`` is a model name, ``op`` is ``encode`` or ``decode``, ``backend`` is
``redis`` or ``memory``; a rejection ``reason`` is one of ``REJECT_REASONS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

REJECT_REASONS = ("queue_full", "deadline", "disconnected", "cancelled", "error", "shutdown")


class EventSink(Protocol):
    """What the service reports."""

    def request_answered(self, endpoint: str, status: int, seconds: float) -> None:
        """An HTTP request was answered (``endpoint`` is a fixed route or ``other``)."""

    def queue_depth(self, model: str, op: str, tiles: int) -> None:
        """Tiles now waiting for a model call of (model, op)."""

    def batch_formed(self, model: str, op: str, tiles: int, waited_s: Sequence[float]) -> None:
        """A batch left the queue: its tiles, and how long each request's part of it waited."""

    def batch_computed(self, model: str, op: str, tiles: int, unique: int, seconds: float) -> None:
        """A model call answered ``tiles`` tiles, ``unique`` of them distinct, in ``seconds``."""

    def batch_failed(self, model: str, op: str, tiles: int, error: str) -> None:
        """A model call raised (or returned the wrong rows); its ``tiles`` were not computed."""

    def tiles_rejected(self, model: str, op: str, reason: str, tiles: int) -> None:
        """Tiles that will never be computed, and why (``REJECT_REASONS``; model failures are
        ``batch_failed``)."""

    def tiles_from_cache(self, model: str, tiles: int, op: str = "encode") -> None:
        """Encoded tiles answered from the latent cache (duplicates in a request included); ``op``
        is ``refine`` for refined latents."""

    def tiles_refined(self, model: str, tiles: int, asked: int, done: int) -> None:
        """Latents of ``tiles`` distinct tiles refined: ``done`` of the ``asked`` steps (fewer when
        the request's deadline or the queue cut the refinement short)."""

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        """One lookup of distinct tiles: found and not found (skipped lookups count as misses)."""

    def cache_error(self, backend: str, op: str) -> None:
        """A cache operation failed: ``get``, ``put`` or ``decode`` (an unreadable stored value)."""

    def cache_skipped(self, backend: str, op: str) -> None:
        """A cache operation was skipped because its backend is failing (the circuit is open)."""


class NullSink:
    """Ignores every event; the base of partial sinks."""

    def request_answered(self, endpoint: str, status: int, seconds: float) -> None:
        pass

    def queue_depth(self, model: str, op: str, tiles: int) -> None:
        pass

    def batch_formed(self, model: str, op: str, tiles: int, waited_s: Sequence[float]) -> None:
        pass

    def batch_computed(self, model: str, op: str, tiles: int, unique: int, seconds: float) -> None:
        pass

    def batch_failed(self, model: str, op: str, tiles: int, error: str) -> None:
        pass

    def tiles_rejected(self, model: str, op: str, reason: str, tiles: int) -> None:
        pass

    def tiles_from_cache(self, model: str, tiles: int, op: str = "encode") -> None:
        pass

    def tiles_refined(self, model: str, tiles: int, asked: int, done: int) -> None:
        pass

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        pass

    def cache_error(self, backend: str, op: str) -> None:
        pass

    def cache_skipped(self, backend: str, op: str) -> None:
        pass


NULL = NullSink()


class Fanout:
    """Every event to each of ``sinks``, in order."""

    def __init__(self, *sinks: EventSink) -> None:
        self.sinks = sinks

    def request_answered(self, endpoint: str, status: int, seconds: float) -> None:
        for sink in self.sinks:
            sink.request_answered(endpoint, status, seconds)

    def queue_depth(self, model: str, op: str, tiles: int) -> None:
        for sink in self.sinks:
            sink.queue_depth(model, op, tiles)

    def batch_formed(self, model: str, op: str, tiles: int, waited_s: Sequence[float]) -> None:
        for sink in self.sinks:
            sink.batch_formed(model, op, tiles, waited_s)

    def batch_computed(self, model: str, op: str, tiles: int, unique: int, seconds: float) -> None:
        for sink in self.sinks:
            sink.batch_computed(model, op, tiles, unique, seconds)

    def batch_failed(self, model: str, op: str, tiles: int, error: str) -> None:
        for sink in self.sinks:
            sink.batch_failed(model, op, tiles, error)

    def tiles_rejected(self, model: str, op: str, reason: str, tiles: int) -> None:
        for sink in self.sinks:
            sink.tiles_rejected(model, op, reason, tiles)

    def tiles_from_cache(self, model: str, tiles: int, op: str = "encode") -> None:
        for sink in self.sinks:
            sink.tiles_from_cache(model, tiles, op)

    def tiles_refined(self, model: str, tiles: int, asked: int, done: int) -> None:
        for sink in self.sinks:
            sink.tiles_refined(model, tiles, asked, done)

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        for sink in self.sinks:
            sink.cache_lookup(backend, hits, misses)

    def cache_error(self, backend: str, op: str) -> None:
        for sink in self.sinks:
            sink.cache_error(backend, op)

    def cache_skipped(self, backend: str, op: str) -> None:
        for sink in self.sinks:
            sink.cache_skipped(backend, op)
