"""The frameworks whose internals Tessera overrides are installed at the versions constraints.txt
pins, and the environment is consistent (pip check)."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

CONSTRAINTS = Path(__file__).resolve().parents[1] / "constraints.txt"


def pins(text: str) -> dict[str, str]:
    """``name==version`` lines of a constraints file, comments and blank lines skipped."""
    found = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, pinned = line.partition("==")
            found[name.strip()] = pinned.strip()
    return found


def mismatches(pinned: dict[str, str]) -> list[str]:
    problems = []
    for name, wanted in pinned.items():
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "not installed"
        if installed != wanted:
            problems.append(f"{name} {installed} is installed, constraints.txt pins {wanted}")
    return problems


def test_the_installed_frameworks_are_the_pinned_ones():
    pinned = pins(CONSTRAINTS.read_text())
    assert {"fastapi", "starlette", "uvicorn", "httptools"} <= set(pinned)
    problems = mismatches(pinned)
    assert not problems, ("; ".join(problems) + ": install with `pip install -c constraints.txt ...` (make venv "
                          "does), or move the pin with the tests passing")


def test_a_moved_pin_is_caught():
    moved = {name: wanted + ".post99" for name, wanted in pins(CONSTRAINTS.read_text()).items()}
    assert len(mismatches(moved)) == len(moved)


def test_pip_check_finds_the_environment_consistent():
    done = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
