"""Closed-loop single-tile load from ``wrk`` (Debian package ``wrk``), a C load generator.

On a two-core machine the load generator shares a core with the server's event loop; the httpx
generator (``bench.load``) spends ~0.4 ms of CPU per request there, about as much as the server,
so it caps what it can measure. wrk sends the same requests for a few microseconds each. It
reports its own latency percentiles; ``bench/wrk_tiles.lua`` makes every tile distinct and
prints the counts as JSON.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.bodies import TILE_BYTES, npy_header

SCRIPT = Path(__file__).with_name("wrk_tiles.lua")
MARK = "TESSERA_WRK "


def available() -> bool:
    return shutil.which("wrk") is not None


class WrkTiles:
    """Runs of single-tile encodes; each run's tiles start past the last run's, so no tile is
    sent twice by one object (the counter sits in the tile's first bytes, the rest is noise)."""

    def __init__(self, seed: int = 0) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="tessera-wrk-")
        noise = np.random.default_rng(seed).integers(0, 256, TILE_BYTES, dtype=np.uint8).tobytes()
        self.tile_file = Path(self._dir.name) / "tile.npy"
        self.tile_file.write_bytes(npy_header((1, 32, 32, 3)) + noise)
        self.seed = seed
        self._first = 0

    def run(self, url: str, *, concurrency: int, duration_s: float, threads: int = 1, timeout_s: float = 30.0) -> dict:
        """One closed-loop run: ``concurrency`` connections for ``duration_s`` seconds (wrk takes
        whole seconds)."""
        command = [
            "wrk", f"-t{threads}", f"-c{concurrency}", f"-d{max(1, round(duration_s))}s", "--timeout", f"{max(1, round(timeout_s))}s",
            "-s", str(SCRIPT), url, "--", str(self.tile_file), str(self._first + (self.seed << 32)),
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + timeout_s + 30)
        line = next((ln for ln in done.stdout.splitlines() if ln.startswith(MARK)), None)
        if done.returncode != 0 or line is None:
            raise RuntimeError(f"wrk failed (exit {done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
        raw = json.loads(line[len(MARK):])
        self._first += raw["requests"] + concurrency  # the ones in flight at the end were sent too
        return summarize(raw, concurrency)

    def close(self) -> None:
        self._dir.cleanup()


def summarize(raw: dict, concurrency: int) -> dict:
    """wrk's counts in the shape of ``bench.load.summarize``."""
    elapsed = raw["duration_us"] / 1e6
    statuses = {k: v for k, v in sorted(raw["statuses"].items())}
    ok = sum(v for k, v in statuses.items() if 200 <= int(k) < 300)
    transport = sum(raw["socket_errors"].values())
    latency = {k: v / 1000.0 for k, v in raw["latency_us"].items()}
    return {
        "mode": "closed",
        "generator": "wrk",
        "concurrency": concurrency,
        "requests": sum(statuses.values()) + transport,
        "ok": ok,
        "errors": sum(statuses.values()) - ok + transport,
        "status_503": statuses.get("503", 0),
        "transport_errors": transport,
        "statuses": statuses,
        "tiles": ok,
        "cached_tiles": raw["cached_tiles"],
        "elapsed_s": elapsed,
        "tiles_per_s": ok / elapsed if elapsed > 0 else float("nan"),
        "requests_per_s": ok / elapsed if elapsed > 0 else float("nan"),
        "latency_ms": latency,  # wrk's percentiles: of every answered request, whatever its status
    }
