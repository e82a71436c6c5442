"""The benchmark plot: tiles/s and p99 latency against concurrency, next to the raw model."""

from __future__ import annotations

from pathlib import Path


def best_raw(raw: dict, model: str, threads: int, op: str = "encode") -> dict[int, float]:
    """Raw CPU tiles/s by batch size: the faster of the eager and traced forms (what the
    report compares the service with)."""
    best: dict[int, float] = {}
    for p in raw["points"]:
        if p["model"] == model and p["op"] == op and p["device"] == "cpu" and p["threads"] == threads:
            best[p["batch"]] = max(best.get(p["batch"], 0.0), p["tiles_per_s"])
    return dict(sorted(best.items()))


def throughput_plot(service: dict, raw: dict | None, path: Path) -> Path:
    """Two panels: encode tiles/s and p99 latency per number of closed-loop clients."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    threads = service["plan"]["threads"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for key, label, style in (("batching", "service, batching", "o-"), ("no_batching", "service, max_batch_tiles=1", "s--")):
        points = service.get(key) or []
        clients = [p["concurrency"] for p in points]
        left.plot(clients, [p["tiles_per_s"] for p in points], style, label=label)
        right.plot(clients, [p["latency_ms"]["p99"] for p in points], style, label=label)
    if raw is not None:
        curve = best_raw(raw, service["model"], threads)
        left.plot(list(curve), list(curve.values()), "^:", color="black", label=f"raw model, batch = clients ({threads} thread)")
    left.set(xscale="log", xlabel="concurrent clients (raw model: batch size)", ylabel="tiles/s",
             title=f"{service['model']} encode throughput, single-tile requests")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="p99 latency (ms)", title="p99 latency")
    for axis in (left, right):
        axis.set_xticks([1, 4, 16, 64, 128, 256], labels=["1", "4", "16", "64", "128", "256"])
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    left.set_ylim(bottom=0)
    right.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    right.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: f"{value:g}" if f"{value:g}"[0] in "25" else ""))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
