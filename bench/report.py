"""``bench/results/*.json`` -> ``docs/benchmarks.md`` and ``docs/img/bench-throughput.png``.

Every number in the page comes from the results files; ``bench/notes.md`` (the analysis of
where the time goes) is included as written.

    python -m bench.report
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from bench import results
from bench.machine import ROOT
from bench.plot import best_raw, throughput_plot

DOC = ROOT / "docs" / "benchmarks.md"
PLOT = ROOT / "docs" / "img" / "bench-throughput.png"
NOTES = ROOT / "bench" / "notes.md"

TARGETS = {"concurrent": 0.9, "sheet": 0.95, "batching": 5.0, "cache": 20.0}
CEILINGS = {"rest_over_floor", "server_over_model"}  # targets a ratio must stay under (bench.cpu)


def fmt(value: float | None, digits: int = 0) -> str:
    if value is None or value != value:  # None or NaN
        return "n/a"
    return f"{value:,.{digits}f}"


def raw_tiles_per_s(raw: dict | None, model: str, batch: int, threads: int, op: str = "encode") -> float | None:
    """The raw model's tiles/s at ``batch``: the faster of its eager and traced forms."""
    return best_raw(raw or {"points": []}, model, threads, op).get(batch)


def nearest_raw_batch(raw: dict | None, batch: float) -> int | None:
    """The measured raw batch size closest to ``batch`` (on a log scale)."""
    sizes = sorted({p["batch"] for p in (raw or {}).get("points", []) if p["device"] == "cpu"})
    return min(sizes, key=lambda b: abs(np.log(b / batch))) if sizes and batch else None


def point_at(points: list[dict], concurrency: int) -> dict | None:
    return next((p for p in points if p["concurrency"] == concurrency), None)


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or "l" + "r" * (len(header) - 1)
    marks = {"l": "---", "r": "---:"}
    return ["| " + " | ".join(header) + " |", "|" + "|".join(marks[a] for a in align) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


# -- the ratios ----------------------------------------------------------------------------------


def headline_runs(raw: dict | None, service: dict, repeat: dict | None) -> dict[str, list[float]]:
    """Every measurement of each headline number: the main run's first, then the repeats'."""
    model, plan = service["model"], service["plan"]
    c, max_batch = plan["headline_concurrency"], plan["max_batch_tiles"]
    first = {
        "raw": raw_tiles_per_s(raw, model, max_batch, plan["threads"]),
        "batching": (point_at(service["batching"], c) or {}).get("tiles_per_s"),
        "sheet": (service.get("sheet") or {}).get("tiles_per_s"),
        "no_batching": (point_at(service.get("no_batching") or [], c) or {}).get("tiles_per_s"),
    }
    later = (repeat or {}).get("runs") or {}
    return {key: [v for v in [value, *later.get(key, [])] if v] for key, value in first.items()}


def _runs(values: list[float]) -> str:
    middle = float(np.median(values))
    if len(values) == 1:
        return fmt(middle)
    return f"{fmt(middle)} (runs: {', '.join(fmt(v) for v in values)})"


def ratios(raw: dict | None, service: dict | None, cache: dict | None, repeat: dict | None = None,
           cpu: dict | None = None) -> list[dict]:
    """The four targets of the suite: what was measured against what (median of all runs of each)."""
    out = []
    if service is not None:
        plan = service["plan"]
        c, max_batch = plan["headline_concurrency"], plan["max_batch_tiles"]
        runs = headline_runs(raw, service, repeat)
        sheet = service.get("sheet")
        cases = [
            ("concurrent", f"{c} concurrent single-tile encodes vs raw model at batch {max_batch}", "batching", "raw"),
            ("sheet", f"one {sheet['tiles'] // max(sheet['ok'], 1):,}-tile sheet per request vs raw model at batch {max_batch}"
             if sheet else "", "sheet", "raw"),
            ("batching", f"batching vs max_batch_tiles=1, {c} clients", "batching", "no_batching"),
        ]
        for key, what, top, bottom in cases:
            if runs[top] and runs[bottom]:
                out.append({"key": key, "what": what, "measured": f"{_runs(runs[top])} vs {_runs(runs[bottom])} tiles/s",
                            "ratio": float(np.median(runs[top]) / np.median(runs[bottom]))})
        # the same clients against the raw model at the batch size the server actually formed
        point = point_at(service["batching"], c)
        formed = nearest_raw_batch(raw, (point or {}).get("server", {}).get("mean_batch_tiles") or 0)
        raw_formed = raw_tiles_per_s(raw, service["model"], formed, plan["threads"]) if formed else None
        if point and raw_formed and formed != max_batch:
            out.insert(1, {
                "key": "concurrent", "what": f"{c} concurrent single-tile encodes vs raw model at batch {formed} "
                f"(the server's mean batch: {point['server']['mean_batch_tiles']:.1f}), main run only",
                "measured": f"{fmt(point['tiles_per_s'])} vs {fmt(raw_formed)} tiles/s", "ratio": point["tiles_per_s"] / raw_formed,
            })
    for backend, data in ((cache or {}).get("backends") or {}).items():
        case = next((k for k in data["cases"] if k["tiles"] == 256), None)
        if case:
            out.append({
                "key": "cache", "what": f"256-tile sheet cached vs uncached ({backend} cache), p50 latency",
                "measured": f"{fmt(case['cached']['latency_ms']['p50'], 1)} vs {fmt(case['uncached']['latency_ms']['p50'], 1)} ms",
                "ratio": case["speedup_p50"],
            })
    for r in out:
        r["target"] = TARGETS[r["key"]]
        r["met"] = r["ratio"] >= r["target"]
    return out + cpu_ratios(cpu)


def cpu_ratios(cpu: dict | None) -> list[dict]:
    """The two CPU targets of ``bench.cpu``: the service's own CPU against the bare framework's,
    and the server's against its model's at the served batch size (ceilings, not floors)."""
    if not cpu:
        return []
    targets, out = cpu["targets"], []
    for p in cpu["points"]:
        if p["rest_over_floor"] is not None:
            out.append({"key": "rest_over_floor", "what": f"{p['connections']} single-tile connections: server CPU beyond "
                        f"the model vs a bare FastAPI app, per request", "target": targets["rest_over_floor"],
                        "measured": f"{fmt(p['server_us'] - p['model_us'])} vs {fmt(p['floor_us'])} us",
                        "ratio": p["rest_over_floor"]})
        if p["connections"] == targets["connections"] and p["server_over_model"] is not None:
            out.append({"key": "server_over_model", "what": f"{p['connections']} single-tile connections: server CPU per tile "
                        f"vs the raw model at batch {p['model']['batch']} (the served batch)", "target": targets["server_over_model"],
                        "measured": f"{fmt(p['server_us'])} vs {fmt(p['model_us'])} us", "ratio": p["server_over_model"]})
    for r in out:
        r["met"] = r["ratio"] <= r["target"]
    return out


# -- sections --------------------------------------------------------------------------------------


def machine_section(machine: dict) -> list[str]:
    row = [machine["cpu"], str(machine["cores"]), fmt(machine.get("memory_gib"), 1) + " GiB", machine["os"],
           machine["python"], machine["torch"], machine["numpy"], f"`{machine.get('git_commit') or '?'}`"]
    return ["## Machine", "", *table(["CPU", "cores", "memory", "OS", "Python", "torch", "numpy", "commit"], [row], "l" * 8),
            "", f"Measured {machine['measured_at']}. GPUs: {', '.join(machine['cuda_devices']) or 'none'}.", ""]


def summary_section(found: list[dict], repeat: dict | None) -> list[str]:
    rows = [[r["what"], r["measured"], f"**{r['ratio']:.2f}x**", f"{'<=' if r['key'] in CEILINGS else '>='} {r['target']:g}x",
             "yes" if r["met"] else "**no**"] for r in found]
    note = []
    if repeat:
        note = ["", f"Throughputs are the median of {1 + repeat['repeats']} runs, each in fresh processes, for the raw model and "
                f"the service alike (`bench/repeat.py` says why); every run is listed. Cache speed-ups are p50 latencies of one run."]
    return ["## Targets", "", *table(["case", "measured", "ratio", "target", "met"], rows, "llrrl"), *note, ""]


def config_section(service: dict) -> list[str]:
    env = " ".join(f"`{k}={v}`" for k, v in service["server_env"].items() if k != "TESSERA_CHECKPOINTS")
    plan = service["plan"]
    return [
        "## Configuration", "",
        f"- Server: `tessera serve` in its own process (uvicorn, uvloop, httptools), access log off, serving "
        f"`{service['model']}` only; {env}; everything else default (batch window `TESSERA_MAX_WAIT_MS` 5 ms, in-process "
        f"latent cache on). Requests are npy in, npy out (`Accept: application/x-npy`).",
        ("- Load generator: single-tile sweeps by wrk (Debian package `wrk`, one thread, one keep-alive connection per "
         "client, `bench/wrk_tiles.lua`); the sheet, open-loop and cache cases by httpx (`httpx.AsyncHTTPTransport`) on "
         "uvloop. " if service.get("generator") == "wrk" else
         "- Load generator: httpx (`httpx.AsyncHTTPTransport`, one keep-alive connection per client) on uvloop (wrk was not "
         "installed: `apt-get install -y wrk`). ")
        + f"It runs in another process on the same {service['machine']['cores']} cores. Every tile is distinct, so neither the "
        f"cache nor the batcher's de-duplication saves model work; the cache still costs its hashing and lookups.",
        f"- Torch threads: the server runs {plan['threads']} intra-op thread(s) and the raw model is compared at the same "
        f"count. The load generator and the server's event loop need the rest of the machine: with as many torch threads "
        f"as cores, the model's threads and the HTTP work take turns on the same cores (see *Torch threads* below).",
        f"- Sweep points: {fmt(plan['warmup_s'], 1)} s warm-up, then {fmt(plan['duration_s'], 1)} s measured (wrk takes whole "
        f"seconds); latencies are wrk's percentiles (or numpy's, for httpx) of every request answered in the window. Mean batch size comes from the server's "
        f"`tessera_batch_size_tiles` histogram (sum / count between two `/metrics` scrapes, warm-up included).",
        "",
    ]


def raw_section(raw: dict) -> list[str]:
    cpu = [p for p in raw["points"] if p["device"] == "cpu"]
    batches = sorted({p["batch"] for p in cpu})

    def key(p: dict) -> tuple:
        return p["model"], p["op"], p["threads"], p.get("graph", "eager")

    rows = []
    for model, op, threads, graph in sorted({key(p) for p in cpu}, key=lambda k: (k[0], k[1] != "encode", k[2], k[3])):
        by_batch = {p["batch"]: p["tiles_per_s"] for p in cpu if key(p) == (model, op, threads, graph)}
        rows.append([f"`{model}`", op, graph, str(threads), *(fmt(by_batch.get(b)) for b in batches)])
    return [
        "## Raw model", "",
        "In-process, fp32, no HTTP; median of `torch.utils.benchmark.Timer.blocked_autorange`. *eager*: the model module on "
        "float tensors prepared in advance. *trace*: the call the server makes (`service/batching/graphs.py`): numpy uint8 tiles "
        "(or float32 latents) in, numpy out, through the frozen TorchScript graph. The service is compared with the faster "
        "of the two. Tiles/s by batch size:", "",
        *table(["model", "op", "graph", "threads", *(f"batch {b}" for b in batches)], rows), "",
    ]


def sweep_section(service: dict, raw: dict | None, plot: str) -> list[str]:
    model, threads = service["model"], service["plan"]["threads"]
    rows = []
    for p in service["batching"]:
        flat = point_at(service.get("no_batching") or [], p["concurrency"])
        raw_c = raw_tiles_per_s(raw, model, min(p["concurrency"], service["plan"]["max_batch_tiles"]), threads)
        rows.append([
            str(p["concurrency"]), fmt(p["tiles_per_s"]), fmt(raw_c),
            fmt(p["latency_ms"]["p50"], 1), fmt(p["latency_ms"]["p95"], 1), fmt(p["latency_ms"]["p99"], 1),
            fmt(p["server"]["mean_batch_tiles"], 1), f"{p['errors']} / {p['status_503']}", fmt(p["cached_tiles"]),
            fmt(flat and flat["tiles_per_s"]), fmt(flat and flat["latency_ms"]["p99"], 1),
            f"{flat['errors']} / {flat['status_503']}" if flat else "n/a",
        ])
    return [
        "## Service: closed-loop sweep", "",
        f"![encode tiles/s and p99 latency against concurrent clients]({plot})", "",
        f"Single-tile npy encodes of `{model}`. *raw* is the raw model at batch = clients (at most max_batch_tiles), "
        f"{threads} thread(s). Errors are all non-2xx answers and failed connections; 503s are counted apart. *from cache* "
        f"counts tiles answered from the latent cache (X-Tessera-Cached): every tile is new, so it must be 0.", "",
        *table(["clients", "tiles/s", "raw", "p50 ms", "p95 ms", "p99 ms", "mean batch", "errors / 503", "from cache",
                "no batching: tiles/s", "p99 ms", "errors / 503"], rows), "",
    ]


def cpu_rows(points: list[tuple[str, dict]]) -> list[list[str]]:
    """CPU microseconds per computed tile of each process part, from one run's ``cpu_s``."""
    rows = []
    for label, p in points:
        cpu, tiles = p.get("cpu_s") or {}, p["server"]["batched_tiles"]
        if not tiles or "server_loop" not in cpu:
            continue
        parts = [cpu["load_generator"], cpu["server_loop"], cpu["server_model"]]
        rows.append([label, *(fmt(1e6 * v / tiles) for v in parts), fmt(1e6 * sum(parts) / tiles),
                     fmt(sum(parts) / cpu["wall"], 2), fmt(cpu.get("other_processes", float("nan")) / cpu["wall"], 2)])
    return rows


def cpu_section(service: dict) -> list[str]:
    points = [(f"{p['concurrency']} clients", p) for p in service["batching"]]
    points += [(f"{p['concurrency']} clients, no batching", p) for p in service.get("no_batching") or []]
    sheet = service.get("sheet")
    if sheet:
        points.append((f"{sheet['tiles'] // max(sheet['ok'], 1):,}-tile sheet", sheet))
    rows = cpu_rows(points)
    if not rows:
        return []
    return ["## Where the CPU goes", "",
            "CPU time of each part per tile computed, over the whole run of each case (warm-up included), from "
            "`/proc/<pid>/task/*/stat` of the server and `getrusage` of the load generator (wrk's process, or httpx's). "
            "*server loop* is the "
            "server's main thread (uvicorn, FastAPI, decoding, hashing, cache, answers); *model* is every other thread "
            "(the model threads: batch collection and model calls). *cores busy* is their sum over wall time (the machine has "
            f"{service['machine']['cores']}); *others* is what every other process used meanwhile (from /proc/stat): "
            f"well above 0 means the case shared the machine and its numbers are low.", "",
            *table(["case", "load generator us", "server loop us", "model us", "total us", "cores busy", "others (cores)"], rows), ""]


def sheet_section(service: dict, raw: dict | None) -> list[str]:
    out = ["## Big sheet and open loop", ""]
    sheet = service.get("sheet")
    rows = []
    if sheet:
        per_request = sheet["tiles"] // max(sheet["ok"], 1)
        rows.append([f"{per_request:,}-tile PNG sheet, 1 client, {sheet['ok']} sheets", fmt(sheet["tiles_per_s"]),
                     fmt(sheet["latency_ms"]["p50"], 1), fmt(sheet["latency_ms"]["p99"], 1),
                     fmt(sheet["server"]["mean_batch_tiles"], 1), f"{sheet['errors']} / {sheet['status_503']}"])
    opened = service.get("open_loop")
    if opened:
        rows.append([f"open loop, {fmt(opened['rate'])} single-tile requests/s offered", fmt(opened["tiles_per_s"]),
                     fmt(opened["latency_ms"]["p50"], 1), fmt(opened["latency_ms"]["p99"], 1),
                     fmt(opened["server"]["mean_batch_tiles"], 1), f"{opened['errors']} / {opened['status_503']}"])
    out += table(["case", "tiles/s", "p50 ms", "p99 ms", "mean batch", "errors / 503"], rows)
    out += ["", "The sheet's latency is the whole request: upload, PNG decode, hashing, model calls in batches of "
            "max_batch_tiles, npy answer. The open-loop rate is a fixed fraction of the 64-client throughput, sent by the "
            "httpx generator (wrk has no open loop); its latency runs from each request's scheduled start, so queueing "
            "behind a slow answer counts.", ""]
    return out


def threads_section(service: dict, raw: dict | None) -> list[str]:
    other = service.get("other_threads")
    if not other:
        return []
    model, plan = service["model"], service["plan"]
    rows = []
    for threads, point, sheet in ((plan["threads"], point_at(service["batching"], plan["headline_concurrency"]), service.get("sheet")),
                                  (other["threads"], other["sweep"][0], other["sheet"])):
        raw_t = raw_tiles_per_s(raw, model, plan["max_batch_tiles"], threads)
        rows.append([str(threads), fmt(raw_t), fmt(point and point["tiles_per_s"]),
                     fmt(point and raw_t and point["tiles_per_s"] / raw_t, 2), fmt(sheet and sheet["tiles_per_s"]),
                     fmt(sheet and raw_t and sheet["tiles_per_s"] / raw_t, 2)])
    return ["## Torch threads", "",
            f"The same server with `TESSERA_TORCH_THREADS` changed; raw model at batch {plan['max_batch_tiles']} with the same "
            f"thread count.", "",
            *table(["torch threads", "raw tiles/s", f"{plan['headline_concurrency']} clients tiles/s", "ratio",
                    "sheet tiles/s", "ratio"], rows), ""]


def cache_section(cache: dict) -> list[str]:
    rows = []
    for backend, data in cache["backends"].items():
        for case in data["cases"]:
            u, c = case["uncached"], case["cached"]
            rows.append([backend, f"{case['tiles']:,}", fmt(u["latency_ms"]["p50"], 1), fmt(c["latency_ms"]["p50"], 1),
                         fmt(c["latency_ms"]["p99"], 1), f"**{case['speedup_p50']:.1f}x**",
                         f"{c['cached_tiles']:,} / {c['tiles']:,}"])
    return ["## Latent cache", "",
            "One client; distinct PNG sheets first (every tile a miss), then one of them again and again (every tile a hit).", "",
            *table(["cache", "tiles per sheet", "uncached p50 ms", "cached p50 ms", "cached p99 ms", "speed-up",
                    "tiles answered from cache"], rows), ""]


def cpu_request_section(cpu: dict) -> list[str]:
    """Floor, model and the rest of one single-tile request's CPU (``bench.cpu``)."""
    rows = []
    for p in cpu["points"]:
        server = p["server"]
        rows.append([str(p["connections"]), fmt(p["floor_us"]), fmt(p["model_us"]), str(p["model"]["batch"]), fmt(p["rest_us"]),
                     fmt(p["server_us"]), fmt(server.get("loop_us_per_request")),
                     fmt(server.get("model_thread_us_per_request")), fmt(p["rest_over_floor"], 2), fmt(p["server_over_model"], 2),
                     fmt(server["server"]["mean_batch_tiles"], 1), f"{server['errors']} / {p['floor']['errors']}",
                     fmt(max(server["other_cores"] or 0, p["floor"]["other_cores"] or 0), 2)])
    plan = cpu["plan"]
    return ["## CPU per request: floor, model and the rest", "",
            f"Single-tile npy encodes of `{cpu['model']}` from {cpu['generator']} at each number of connections, every tile "
            f"distinct, {fmt(plan['warmup_s'], 1)} s warm-up, then {fmt(plan['duration_s'], 1)} s measured (`bench/cpu.py`). "
            f"Microseconds of CPU per request (= per tile), from the processes' own CPU time (`/proc/<pid>/stat`, every "
            f"thread; hypervisor steal does not inflate it as it does wall time). *floor*: a bare FastAPI + uvicorn app that "
            f"reads the same body and answers a fixed npy latent (`bench/floor_app.py`). *model*: the server's traced model "
            f"call on its own, {plan['threads']} torch thread(s), at the server's mean batch for those connections. *rest*: "
            f"server - model - floor, what the service itself spends (routing, admission, decoding, hashing, cache, "
            f"batching, hand-offs, metrics, answer). *event loop* and *model threads*: the server's CPU split by thread, its "
            f"main thread (uvicorn's event loop: HTTP, routing, decoding, cache, answers) and the others (the model thread's "
            f"batch collection, model calls and hand-backs, torch's pool); *model threads* against *model* is what the same "
            f"call costs inside the busy server. Targets: (server - model) <= {cpu['targets']['rest_over_floor']:g}x "
            f"floor; at {cpu['targets']['connections']} connections server <= {cpu['targets']['server_over_model']:g}x "
            f"model. *others*: cores' worth of CPU every other process used meanwhile (well above 0: a shared machine).", "",
            *table(["connections", "floor us", "model us", "at batch", "rest us", "server us", "event loop us",
                    "model threads us", "(server - model) / floor",
                    "server / model", "mean batch", "errors (server / floor)", "others (cores)"], rows), "",
            *pause_note(cpu)]


def pause_note(cpu: dict) -> list[str]:
    """The raw model at batch 1 when each call follows a pause, as a lone client's calls do."""
    paused = cpu.get("model_after_pause")
    if not paused:
        return []
    slower = paused["us_per_tile"] / paused["back_to_back_us"] - 1
    return [f"The same raw call at batch 1 with a {1e3 * paused['pause_s']:.2f} ms sleep before each call, as long as "
            f"the model thread was idle per request at {paused.get('connections', 1)} connection(s) (wall time per request "
            f"less its CPU): {fmt(paused['us_per_tile'])} us against {fmt(paused['back_to_back_us'])} us back to back "
            f"({100 * slower:+.0f}%): the part of the model threads' excess over *model* that the pause explains.", ""]


def profile_section(profile: dict) -> list[str]:
    point = profile["load"]
    rows = [[g["group"], fmt(100 * g["share"], 1) + " %", fmt(g["us_per_tile"], 1)] for g in profile["groups"]]
    return ["## Profile of the server", "",
            f"`py-spy` samples of every server thread during {profile['case']} ({profile['samples']:,} samples; "
            f"{fmt(point['tiles_per_s'])} tiles/s, mean batch {fmt(point['server']['mean_batch_tiles'], 1)}), grouped by the "
            f"innermost frame that names a step of the request path (`bench/profile.py`). Microseconds are the share of the "
            f"server's CPU time per tile.", "",
            *table(["where", "samples", "us per tile"], rows), ""]


def path_section(path: dict) -> list[str]:
    steps = list(dict.fromkeys(r["step"] for r in path["steps"]))
    sizes = sorted({r["tiles"] for r in path["steps"]})
    cost = {(r["step"], r["tiles"]): r["us_per_request"] for r in path["steps"]}
    rows = [[step, *(fmt(cost.get((step, n)), 1) for n in sizes)] for step in steps]
    return ["## Request path, step by step", "",
            f"Each step of an encode request timed on its own in-process (`timeit`, median), microseconds per request; "
            f"model call with {path['threads']} thread(s).", "",
            *table(["step", *(f"{n:,} tile{'s' if n > 1 else ''}" for n in sizes)], rows), ""]


def gpu_section(raw: dict | None) -> list[str]:
    cuda = [p for p in (raw or {}).get("points", []) if p["device"].startswith("cuda")]
    out = ["## GPU", ""]
    if not cuda:
        return out + ["Not measured on this machine (no GPU was available). On a CUDA host `make bench` adds raw rows "
                      "for fp32, fp16 and bf16 at batches 64 to 4,096.", ""]
    gpus = ", ".join((raw["machine"].get("cuda_devices") or ["CUDA"]))
    rows = [[f"`{p['model']}`", p["op"], p["dtype"], str(p["batch"]), fmt(p["tiles_per_s"])] for p in cuda]
    return out + [f"Raw model on {gpus}.", "", *table(["model", "op", "dtype", "batch", "tiles/s"], rows), ""]


def render(folder: Path, doc: Path = DOC, plot: Path = PLOT) -> str:
    """The page for ``doc``; draws ``plot`` on the way."""
    raw, service, cache, path, profile, repeat, run, cpu = (
        results.load(folder, s) for s in ("raw", "service", "cache", "path", "profile", "repeat", "run", "cpu")
    )
    machine = next((d["machine"] for d in (service, raw, cache, path, cpu) if d), None)
    if machine is None:
        raise FileNotFoundError(f"no results in {folder}; run `make bench` (or python -m bench.run_all) first")
    lines = ["# Benchmarks", "",
             "Generated by `make bench` (`python -m bench.run_all`) from `bench/results/*.json`; do not edit by hand. "
             "The analysis at the end is `bench/notes.md`.", ""]
    lines += machine_section(machine)
    if run:
        stages = ", ".join(f"{k} {v:.0f} s" for k, v in run["stage_seconds"].items() if k != "total")
        lines += [f"The whole run took {run['stage_seconds']['total'] / 60:.1f} minutes ({stages}); 1-minute load average "
                  f"before it: {run['load_avg_1m_before']:.2f}." + (" **Quick run: the numbers mean nothing.**" if run["quick"] else ""), ""]
    lines += summary_section(ratios(raw, service, cache, repeat, cpu), repeat)
    if service:
        lines += config_section(service)
    if raw:
        lines += raw_section(raw)
    if service:
        throughput_plot(service, raw, plot)
        lines += sweep_section(service, raw, os.path.relpath(plot, doc.parent))
        lines += sheet_section(service, raw)
        lines += threads_section(service, raw)
        lines += cpu_section(service)
    if cpu:
        lines += cpu_request_section(cpu)
    if cache:
        lines += cache_section(cache)
    if profile:
        lines += profile_section(profile)
    if path:
        lines += path_section(path)
    lines += gpu_section(raw)
    if NOTES.exists():
        lines += [NOTES.read_text().strip(), ""]
    lines += ["## Reproduce", "", "    make bench                          # all stages, then this page (under 10 minutes on 2 cores)",
              "    .venv/bin/python -m bench.run_all --quick   # seconds per stage: checks the harness, numbers meaningless",
              "    .venv/bin/python -m bench.report            # this page again from bench/results/", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=results.RESULTS)
    parser.add_argument("--out", type=Path, default=DOC)
    parser.add_argument("--plot", type=Path, default=PLOT)
    args = parser.parse_args(argv)
    text = render(args.results, args.out, args.plot)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
