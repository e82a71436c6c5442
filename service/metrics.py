"""Prometheus metrics of one app, all ``tessera_``-prefixed, with bounded labels only.

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

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest

ENDPOINTS = ("/v1/encode", "/v1/decode", "/v1/models", "/healthz", "/readyz", "/metrics")
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TILE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def status_class(status: int) -> str:
    return f"{status // 100}xx" if 100 <= status < 600 else "5xx"


class BatchMetrics:
    """The ``BatchObserver`` of one (model, op): batcher events -> series."""

    def __init__(self, metrics: Metrics, model: str, op: str) -> None:
        labels = {"model": model, "op": op}
        self._size = metrics.batch_size.labels(**labels)
        self._unique = metrics.batch_unique.labels(**labels)
        self._compute = metrics.batch_compute.labels(**labels)
        self._wait = metrics.queue_wait.labels(**labels)
        self._depth = metrics.queue_depth.labels(**labels)
        self._rejected = metrics.rejected
        self._computed = metrics.tiles.labels(source="model", **labels)
        self._labels = labels

    def on_batch(self, tiles: int, unique: int, seconds: float) -> None:
        self._size.observe(tiles)
        self._unique.observe(unique)
        self._compute.observe(seconds)
        self._computed.inc(tiles)

    def on_queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def on_queue_depth(self, tiles: int) -> None:
        self._depth.set(tiles)

    def on_rejected(self, reason: str, tiles: int) -> None:
        self._rejected.labels(reason=reason, **self._labels).inc(tiles)


class Metrics:
    """Every series of the service, registered in a fresh registry."""

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
        self.queue_depth = Gauge(
            "tessera_queue_depth_tiles", "Tiles waiting for a model call", ["model", "op"], registry=registry
        )
        self.rejected = Counter(
            "tessera_rejected_tiles", "Tiles not computed, by reason", ["model", "op", "reason"], registry=registry
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

    def batch_observer(self, model: str, op: str) -> BatchMetrics:
        return BatchMetrics(self, model, op)

    def cache_lookup(self, backend: str, hits: int, misses: int) -> None:
        self.cache_hits.labels(backend).inc(hits)
        self.cache_misses.labels(backend).inc(misses)

    def cache_error(self, backend: str, op: str) -> None:
        self.cache_errors.labels(backend, op).inc()

    def cached_tiles(self, model: str, tiles: int) -> None:
        self.tiles.labels(model=model, op="encode", source="cache").inc(tiles)

    def add_model(self, name: str, arch: str, compression_ratio: float, weights_sha256: str) -> None:
        self.model_info.labels(name, arch, f"{compression_ratio:g}", weights_sha256).set(1)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """ASGI middleware: count and time every HTTP request by endpoint and status class."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = path if path in ENDPOINTS else "other"
        start = time.perf_counter()
        status = 500

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            labels = (endpoint, status_class(status))
            self.metrics.requests.labels(*labels).inc()
            self.metrics.request_duration.labels(*labels).observe(time.perf_counter() - start)
