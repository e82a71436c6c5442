"""Prometheus metrics of one app, all ``tessera_``-prefixed, with bounded labels only: the
``EventSink`` (``tessera.service.runtime.events``) the app reports to.

Labels are model names, operations (encode|decode), endpoints (the fixed routes, else
``other``), status classes (2xx..5xx), reasons, sources and cache backends: never a tile hash,
a client or a raw path. Each app owns its ``CollectorRegistry`` so several apps (tests) never
share series; ``/metrics`` exposes it with the process collector (memory, CPU, open files).

    tessera_requests_total{endpoint,status}                 requests answered
    tessera_request_duration_seconds{endpoint,status}       time to answer (histogram)
    tessera_tiles_total{model,op,source}                    tiles answered, source = cache|model
    tessera_batch_size_tiles{model,op}                      tiles per model call (histogram)
    tessera_batch_unique_tiles{model,op}                    rows computed per model call (histogram)
    tessera_batch_compute_seconds{model,op}                 duration of one model call (histogram)
    tessera_queue_wait_seconds{model,op}                    enqueue to batch start (histogram)
    tessera_queue_depth_tiles{model,op}                     tiles waiting now (gauge)
    tessera_rejected_tiles_total{model,op,reason}           tiles not computed: queue_full, deadline,
                                                            disconnected, cancelled, error, shutdown
    tessera_cache_hits_total{backend}                       latent cache lookups that hit (tiles)
    tessera_cache_misses_total{backend}                     ... that missed
    tessera_cache_errors_total{backend,op}                  cache operations that failed (op = get|put|decode)
    tessera_model_info{model,arch,compression_ratio,weights_sha256}   1 per loaded model
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

ENDPOINTS = ("/v1/encode", "/v1/decode", "/v1/models", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


class _Batching(NamedTuple):
    """The series of one (model, op), looked up once."""

    size: Histogram
    unique: Histogram
    compute: Histogram
    wait: Histogram
    depth: Gauge
    computed: Counter


class Metrics:
    """Every series of the service, registered in a fresh registry; an ``EventSink``."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        self.requests = Counter(
            "tessera_requests", "HTTP requests answered", ["endpoint", "status"], registry=registry
        )
        self.request_duration = Histogram(
            "tessera_request_duration_seconds", "Time to answer an HTTP request", ["endpoint", "status"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.tiles = Counter(
            "tessera_tiles", "Tiles answered, by where their result came from", ["model", "op", "source"], registry=registry
        )
        self.batch_size = Histogram(
            "tessera_batch_size_tiles", "Tiles per model call", ["model", "op"], buckets=TILE_BUCKETS, registry=registry
        )
        self.batch_unique = Histogram(
            "tessera_batch_unique_tiles", "Distinct tiles computed per model call", ["model", "op"],
            buckets=TILE_BUCKETS, registry=registry,
        )
        self.batch_compute = Histogram(
            "tessera_batch_compute_seconds", "Duration of one model call", ["model", "op"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_wait = Histogram(
            "tessera_queue_wait_seconds", "Time from enqueue to the start of the batch", ["model", "op"],
            buckets=LATENCY_BUCKETS, registry=registry,
        )
        self.queue_depth_tiles = Gauge(
            "tessera_queue_depth_tiles", "Tiles waiting for a model call", ["model", "op"], registry=registry
        )
        self.rejected = Counter(
            "tessera_rejected_tiles", "Tiles not computed, by reason", ["model", "op", "reason"], registry=registry
        )
        self.refined = Counter(
            "tessera_refined_tiles", "Tiles whose latents were refined (encode ?refine=), by whether every step asked "
            "for ran", ["model", "outcome"], registry=registry,
        )
        self.refine_steps = Counter(
            "tessera_refine_steps", "Refinement steps run, summed over tiles", ["model"], registry=registry
        )
        self.cache_hits = Counter("tessera_cache_hits", "Latent cache lookups that hit", ["backend"], registry=registry)
        self.cache_misses = Counter("tessera_cache_misses", "Latent cache lookups that missed", ["backend"], registry=registry)
        self.cache_errors = Counter(
            "tessera_cache_errors", "Latent cache operations that failed", ["backend", "op"], registry=registry
        )
        self.model_info = Gauge(
            "tessera_model_info", "Loaded models (value 1)", ["model", "arch", "compression_ratio", "weights_sha256"],
            registry=registry,
        )
        self._batching: dict[tuple[str, str], _Batching] = {}
        self._requests: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._lookups: dict[str, tuple[Counter, Counter]] = {}

    def _series(self, model: str, op: str) -> _Batching:
        found = self._batching.get((model, op))
        if found is None:
            labels = {"model": model, "op": op}
            found = self._batching[(model, op)] = _Batching(
                self.batch_size.labels(**labels), self.batch_unique.labels(**labels), self.batch_compute.labels(**labels),
                self.queue_wait.labels(**labels), self.queue_depth_tiles.labels(**labels),
                self.tiles.labels(source="model", **labels),
            )
        return found

    # -- events ------------------------------------------------------------------------------

    def request_answered(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status_class(status))
        series = self._requests.get(key)
        if series is None:
            series = self._requests[key] = (self.requests.labels(*key), self.request_duration.labels(*key))
        series[0].inc()
        series[1].observe(seconds)

    def queue_depth(self, model: str, op: str, tiles: int) -> None:
        self._series(model, op).depth.set(tiles)

    def batch_formed(self, model: str, op: str, tiles: int, waited_s: Sequence[float]) -> None:
        wait = self._series(model, op).wait
        for seconds in waited_s:
            wait.observe(seconds)

    def batch_computed(self, model: str, op: str, tiles: int, unique: int, seconds: float) -> None:
        series = self._series(model, op)
        series.size.observe(tiles)
        series.unique.observe(unique)
        series.compute.observe(seconds)
        series.computed.inc(tiles)

    def batch_failed(self, model: str, op: str, tiles: int, error: str) -> None:
        self.rejected.labels(model=model, op=op, reason="error").inc(tiles)

    def tiles_rejected(self, model: str, op: str, reason: str, tiles: int) -> None:
        self.rejected.labels(model=model, op=op, reason=reason).inc(tiles)

    def tiles_from_cache(self, model: str, tiles: int, op: str = "encode") -> None:
        self.tiles.labels(model=model, op=op, source="cache").inc(tiles)

    def tiles_refined(self, model: str, tiles: int, asked: int, done: int) -> None:
        self.refined.labels(model=model, outcome="complete" if done >= asked else "cut_short").inc(tiles)
        self.refine_steps.labels(model=model).inc(tiles * done)

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        series = self._lookups.get(backend)
        if series is None:
            series = self._lookups[backend] = (self.cache_hits.labels(backend), self.cache_misses.labels(backend))
        if hits:
            series[0].inc(hits)
        if misses:
            series[1].inc(misses)

    def cache_error(self, backend: str, op: str) -> None:
        self.cache_errors.labels(backend, op).inc()

    def cache_skipped(self, backend: str, op: str) -> None:
        pass  # counted as misses by the lookup itself (tessera_cache_misses_total)

    # -- the rest ------------------------------------------------------------------------------

    def add_model(self, name: str, arch: str, compression_ratio: float, weights_sha256: str) -> None:
        """A loaded model: its info series, and its batching series at zero (so that queue
        depth and batch counts exist before the first request)."""
        self.model_info.labels(name, arch, f"{compression_ratio:g}", weights_sha256).set(1)
        for op in ("encode", "decode"):
            self._series(name, op)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
