"""The server's own view of a run, from ``/metrics`` (parsed by ``prometheus_client.parser``).

A run is bracketed by two scrapes; ``between(before, after)`` gives what happened in between:
model calls and tiles per call, queue wait, rejected tiles and cache hits.
"""

from __future__ import annotations

import collections

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset], float]  # (sample name, labels) -> value


def scrape(url: str) -> Samples:
    text = httpx.get(f"{url}/metrics", timeout=10.0).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _total(samples: Samples, name: str, **labels: str) -> float:
    """Sum of ``name`` over every series whose labels include ``labels``."""
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)


def between(before: Samples, after: Samples, model: str, op: str = "encode") -> dict:
    """Server-side counts of one run of ``op`` on ``model``."""

    def delta(name: str, **labels: str) -> float:
        return _total(after, name, **labels) - _total(before, name, **labels)

    labels = {"model": model, "op": op}
    batches = delta("tessera_batch_size_tiles_count", **labels)
    tiles = delta("tessera_batch_size_tiles_sum", **labels)
    waits = delta("tessera_queue_wait_seconds_count", **labels)
    rejected = collections.Counter()
    for (name, sample_labels), value in after.items():
        if name == "tessera_rejected_tiles_total" and set(labels.items()) <= sample_labels:
            reason = dict(sample_labels)["reason"]
            rejected[reason] += value - before.get((name, sample_labels), 0.0)
    return {
        "batches": int(batches),
        "batched_tiles": int(tiles),
        "mean_batch_tiles": tiles / batches if batches else None,
        "mean_compute_ms": 1000 * delta("tessera_batch_compute_seconds_sum", **labels) / batches if batches else None,
        "mean_queue_wait_ms": 1000 * delta("tessera_queue_wait_seconds_sum", **labels) / waits if waits else None,
        "rejected_tiles": {reason: int(n) for reason, n in rejected.items() if n},
        "cache_hits": int(delta("tessera_cache_hits_total")),
        "cache_misses": int(delta("tessera_cache_misses_total")),
    }
