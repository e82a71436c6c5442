"""The replicated stack under load and failure, run by .ci/container-scale against
docker-compose.yml + deploy/compose/docker-compose.scale.yml (3 api replicas behind HAProxy).

1. every replica gets load: each one's tessera_requests_total (as Prometheus scraped it) grows;
2. the cache is shared: a sheet encoded through one replica is answered from Redis by another
   (X-Tessera-Cached, the replica named by HAProxy's X-Tessera-Replica header);
3. steady load while one replica gets SIGTERM and, once it has exited, another SIGKILL. Failed
   requests are counted for plain requests (no client retry: only HAProxy's retries) and for
   the Tessera client (its retries on 503 and broken connections), per phase.

The figures go to a JSON file (--out) for docs/scaling.md; the exit status is 1 when SIGTERM
cost a request, when the Tessera client saw any failure, or when plain requests lost at SIGKILL
outnumber what that replica held when it was killed.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "reliability")]

from tessera.client import AsyncClient  # noqa: E402
from tessera.client.errors import TesseraError  # noqa: E402
from reliability_load import BackgroundLoad  # noqa: E402

NPY = "application/x-npy"
RAW_CLIENTS = 8
TESSERA_CLIENTS = 4
SETTLE_S = 5.0  # steady load before the first signal, and after the last


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def tiles(seed: int, n: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3), dtype=np.uint8)


def docker(args: argparse.Namespace, *command: str) -> str:
    return subprocess.run([args.docker, *command], check=True, capture_output=True, text=True).stdout.strip()


def replicas(args: argparse.Namespace) -> dict[str, str]:
    """api container name -> its address on the compose network."""
    names = docker(args, "ps", "--filter", f"label=com.docker.compose.project={args.project}",
                   "--filter", "label=com.docker.compose.service=api", "--format", "{{.Names}}").split()
    return {name: docker(args, "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name)
            for name in sorted(names)}


def haproxy_servers(args: argparse.Namespace) -> list[dict]:
    """The api backend's servers from HAProxy's CSV statistics (status, scur, addr, ...)."""
    text = httpx.get(f"{args.stats}/stats;csv", timeout=5).text.lstrip("# ")
    return [row for row in csv.DictReader(io.StringIO(text)) if row["pxname"] == "api" and row["svname"] not in ("FRONTEND", "BACKEND")]


def prometheus(args: argparse.Namespace, expr: str) -> list[dict]:
    r = httpx.get(f"{args.prometheus}/api/v1/query", params={"query": expr}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def wait(condition, what: str, timeout_s: float = 120.0, every_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            sys.exit(f"not within {timeout_s:.0f} s: {what}")
        time.sleep(every_s)


# -- 1. load spread ----------------------------------------------------------------------------


def check_spread(args: argparse.Namespace, names: dict[str, str]) -> dict:
    wait(lambda: sum(s["status"].startswith("UP") for s in haproxy_servers(args)) == len(names), "every replica UP in HAProxy")
    wait(lambda: len([s for s in prometheus(args, 'up{job="tessera"}') if s["value"][1] == "1"]) == len(names),
         "Prometheus scraping every replica")
    query = 'sum by (instance) (tessera_requests_total{job="tessera",endpoint="/v1/encode",status="2xx"})'
    before = {s["metric"]["instance"]: float(s["value"][1]) for s in prometheus(args, query)}
    answered_by: dict[str, int] = {}
    requests = 20 * len(names)
    with httpx.Client(base_url=args.api, timeout=60) as http:
        for i in range(requests):
            r = http.post("/v1/encode", content=npy(tiles(10_000 + i)), headers={"Content-Type": NPY, "Accept": NPY})
            r.raise_for_status()
            replica = r.headers["X-Tessera-Replica"]
            answered_by[replica] = answered_by.get(replica, 0) + 1
    started = time.time()
    wait(lambda: all(float(s["value"][1]) > started for s in prometheus(args, 'timestamp(up{job="tessera"})')),
         "a scrape of every replica after the load")
    after = {s["metric"]["instance"]: float(s["value"][1]) for s in prometheus(args, query)}
    grew = {instance: after[instance] - before.get(instance, 0.0) for instance in after}
    print(f"spread: {requests} requests, by HAProxy server {answered_by}; tessera_requests_total grew by {grew}")
    if len(grew) != len(names) or min(grew.values()) < 1:
        sys.exit(f"not every replica got requests: {grew}")
    return {"requests": requests, "by_haproxy_server": answered_by, "requests_total_increase_by_instance": grew}


# -- 2. shared cache ---------------------------------------------------------------------------


def check_shared_cache(args: argparse.Namespace) -> dict:
    sheet = np.random.default_rng(7).integers(0, 256, size=(4 * 32, 8 * 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    headers = {"Content-Type": "image/png", "Accept": NPY}
    with httpx.Client(base_url=args.api, timeout=60) as http:
        first = http.post("/v1/encode", content=buffer.getvalue(), headers=headers)
        first.raise_for_status()
        for _ in range(10):  # round robin: the next request goes to another replica
            second = http.post("/v1/encode", content=buffer.getvalue(), headers=headers)
            second.raise_for_status()
            if second.headers["X-Tessera-Replica"] != first.headers["X-Tessera-Replica"]:
                break
        else:
            sys.exit("every request went to the same replica")
    result = {"first": {"replica": first.headers["X-Tessera-Replica"], "cached": int(first.headers["X-Tessera-Cached"])},
              "second": {"replica": second.headers["X-Tessera-Replica"], "cached": int(second.headers["X-Tessera-Cached"])}}
    print(f"shared cache: {result}")
    if result["first"]["cached"] != 0 or result["second"]["cached"] != 32:
        sys.exit("the second replica did not answer the 32 tiles from Redis")
    return result


# -- 3. SIGTERM and SIGKILL under load ---------------------------------------------------------


class TesseraLoad:
    """``clients`` loops of ``AsyncClient.encode`` (retries on) in a thread; outcomes with times."""

    def __init__(self, url: str, clients: int) -> None:
        self.url, self.clients = url, clients
        self.outcomes: list[tuple[float, float, str]] = []  # (sent, done, "ok" or the error's class)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        async with AsyncClient(self.url, timeout=60, retries=4, concurrency=1) as tessera:

            async def loop(k: int) -> None:
                i = 0
                while not self._stop.is_set():
                    sent = time.monotonic()
                    try:
                        await tessera.encode(tiles(1_000_000 * (k + 1) + i))
                        outcome = "ok"
                    except TesseraError as exc:
                        outcome = type(exc).__name__
                    self.outcomes.append((sent, time.monotonic(), outcome))
                    i += 1

            await asyncio.gather(*(loop(k) for k in range(self.clients)))

    def __enter__(self) -> TesseraLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(120)


def check_failures(args: argparse.Namespace, names: dict[str, str]) -> dict:
    termed, killed = list(names)[:2]
    for name in names:  # a replica that went down stays down for the count
        docker(args, "update", "--restart=no", name)

    def make(i: int):
        return "/v1/encode", npy(tiles(i)), {"Content-Type": NPY, "Accept": NPY}

    with BackgroundLoad(args.api, make, clients=RAW_CLIENTS) as raw, TesseraLoad(args.api, TESSERA_CLIENTS) as client:
        time.sleep(SETTLE_S)
        t_term = time.monotonic()
        docker(args, "kill", "--signal", "TERM", termed)
        wait(lambda: docker(args, "inspect", "-f", "{{.State.Running}}", termed) == "false", f"{termed} exiting", 60, 0.1)
        t_exited = time.monotonic()
        term_exit = int(docker(args, "inspect", "-f", "{{.State.ExitCode}}", termed))
        time.sleep(SETTLE_S)
        servers = haproxy_servers(args)  # sessions each replica held just before the kill
        held = [int(s["scur"] or 0) for s in servers if s.get("addr", "").split(":")[0] == names[killed]]
        sessions = {s["svname"]: {"addr": s.get("addr"), "status": s.get("status"), "sessions": int(s["scur"] or 0)}
                    for s in servers}
        t_kill = time.monotonic()
        docker(args, "kill", "--signal", "KILL", killed)
        time.sleep(SETTLE_S)
        t_end = time.monotonic()
    phases = {"before": (0.0, t_term), "sigterm": (t_term, t_kill), "sigkill": (t_kill, t_end + 60)}

    def phase(sent: float) -> str:
        return next(name for name, (start, end) in phases.items() if start <= sent < end)

    raw_counts: dict[str, dict[str, int]] = {name: {} for name in phases}
    for shot in raw.shots:
        key = "ok" if shot.status == 200 else str(shot.status)  # 0: lost, -1: refused, else the HTTP status
        counts = raw_counts[phase(shot.sent)]
        counts[key] = counts.get(key, 0) + 1
    client_counts: dict[str, dict[str, int]] = {name: {} for name in phases}
    for sent, _, outcome in client.outcomes:
        counts = client_counts[phase(sent)]
        counts[outcome] = counts.get(outcome, 0) + 1

    def failed(counts: dict[str, int]) -> int:
        return sum(n for key, n in counts.items() if key != "ok")

    result = {
        "replicas": len(names), "raw_clients": RAW_CLIENTS, "tessera_clients": TESSERA_CLIENTS,
        "sigterm": {"container": termed, "exit_code": term_exit, "drain_s": round(t_exited - t_term, 2)},
        "sigkill": {"container": killed, "address": names[killed], "haproxy_sessions_at_kill": held[0] if held else None,
                    "haproxy_servers_at_kill": sessions},
        "raw": raw_counts, "tessera_client": client_counts,
        "failed": {"raw_sigterm": failed(raw_counts["sigterm"]), "raw_sigkill": failed(raw_counts["sigkill"]),
                   "tessera_client": sum(failed(c) for c in client_counts.values())},
    }
    print(json.dumps(result, indent=1))
    problems = []
    if result["failed"]["raw_sigterm"]:
        problems.append(f"SIGTERM cost {result['failed']['raw_sigterm']} plain requests")
    if term_exit != 0:
        problems.append(f"{termed} exited {term_exit} after SIGTERM")
    if result["failed"]["tessera_client"]:
        problems.append(f"the Tessera client saw {result['failed']['tessera_client']} failures")
    if held and result["failed"]["raw_sigkill"] > held[0]:
        problems.append(f"SIGKILL cost {result['failed']['raw_sigkill']} plain requests, more than the {held[0]} it held")
    result["problems"] = problems
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, help="HAProxy's frontend, e.g. http://127.0.0.1:8000")
    parser.add_argument("--stats", required=True, help="HAProxy's statistics frontend, e.g. http://127.0.0.1:8404")
    parser.add_argument("--prometheus", required=True)
    parser.add_argument("--project", required=True, help="the compose project name")
    parser.add_argument("--docker", default="docker")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    names = replicas(args)
    if len(names) != 3:
        sys.exit(f"expected 3 api replicas, found {sorted(names)}")
    figures = {"spread": check_spread(args, names), "shared_cache": check_shared_cache(args)}
    figures["failures"] = check_failures(args, names)
    figures["measured_at"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=1, sort_keys=True) + "\n")
    for problem in figures["failures"]["problems"]:
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if figures["failures"]["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
