"""What a benchmark measures of its processes (CPU time from /proc) and how it runs a stage's
command in a process group. ``tessera serve`` and ``redis-server`` themselves come from the test
support package (``tessera.testing.serve``, ``tessera.testing.redis_server``), shared with the tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from pathlib import Path

from bench.machine import ROOT


def project_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout first on PYTHONPATH (so that a child imports
    ``bench`` and ``tessera`` from it), and ``extra``."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def thread_cpu_s(pid: int) -> dict[str, float] | None:
    """CPU seconds (user + system) of a process: its main thread (the server's event loop) and
    all other threads together (model calls, torch's pool). None where /proc is unavailable."""
    tick = os.sysconf("SC_CLK_TCK")
    main = others = 0.0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            stat = (task / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            seconds = (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            if int(task.name) == pid:
                main += seconds
            else:
                others += seconds
    except (OSError, ValueError, IndexError):
        return None
    return {"main": main, "others": others}


def process_cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used, every thread it ever had included, from
    /proc/<pid>/stat; None where it is unavailable. Unlike wall time, hypervisor steal does not
    inflate it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return None


def machine_busy_s() -> float | None:
    """CPU seconds all processes together have used since boot (user, nice, system, irq,
    softirq, steal), from /proc/stat; None where it is unavailable."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_group(cmd: list[str], *, log: Path, timeout_s: float, env: dict[str, str] | None = None, grace_s: float = 5.0) -> int | None:
    """Run ``cmd`` in a process group of its own, output appended to ``log``: its exit code, or
    None when it ran past ``timeout_s`` and was stopped (SIGTERM, SIGKILL ``grace_s`` later).
    Either way whatever it left running in its group (a server, a training run) is killed."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        code = process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        code = None
        _signal_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(process.pid, signal.SIGKILL)
    process.wait()
    return code


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
