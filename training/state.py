"""The resumable state of a run: weights, optimizer, scheduler, step and random generators.

One file, ``last.state.pt``, written atomically with ``torch.save`` and read back with
``torch.load(weights_only=True)``: only tensors, numbers, strings, lists and dicts, so loading
never runs code from the file. Holding the fp32 weights too makes the file the one thing a
resume needs: it can never disagree with a separately written weights file.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path

import torch

from tessera.training.atomic import atomic_write
from tessera.training.errors import TrainingError

FORMAT = "tessera-train-state"
FORMAT_VERSION = 1
KEYS = ("format", "format_version", "step", "inputs_seen", "elapsed_s", "best_val_l1", "config", "commands", "data",
        "model", "optimizer", "scheduler", "rng")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_state(path: str | Path, state: dict) -> Path:
    state = {"format": FORMAT, "format_version": FORMAT_VERSION, **state}
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path: str | Path) -> dict:
    """Read a state written by ``save_state``; any problem is one ``TrainingError`` line."""
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} does not exist; start the run without --resume")
    hint = "delete the run folder or pick another --out to start afresh"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, AttributeError, TypeError) as exc:
        reason = re.split(r"(?<=\.)\s", str(exc).strip())[0][:200] or type(exc).__name__  # torch's first sentence
        raise TrainingError(f"cannot resume: {path} is corrupt or not a training state ({reason}); {hint}") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise TrainingError(f"cannot resume: {path} is not a Tessera training state; {hint}")
    if state.get("format_version") != FORMAT_VERSION:
        raise TrainingError(
            f"cannot resume: {path} has state format {state.get('format_version')!r}, this version reads "
            f"{FORMAT_VERSION}; {hint}"
        )
    missing = [k for k in KEYS if k not in state]
    if missing:
        raise TrainingError(f"cannot resume: {path} lacks {', '.join(missing)}; {hint}")
    return state
