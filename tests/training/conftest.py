"""Fixtures for the training tests: a small synthetic tile data set, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from training_helpers import tiny_config, write_sheets

from tessera.training.data import build_folder
from tessera.training.loop import train


@pytest.fixture(scope="session")
def sheet_folder(tmp_path_factory) -> Path:
    return write_sheets(tmp_path_factory.mktemp("sheets") / "art")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory, sheet_folder) -> Path:
    """A built data set: 3 sheets x 64 tiles minus dropped ones (about 180 train, 10 val)."""
    out = tmp_path_factory.mktemp("data") / "tiny"
    build_folder(sheet_folder, out, tile_size=32)
    return out


@pytest.fixture(scope="session")
def full_run(tmp_path_factory, tiny_data) -> Path:
    """An uninterrupted tiny run, the reference for resumed ones."""
    out = tmp_path_factory.mktemp("runs") / "full"
    train(tiny_config(tiny_data, out))
    return out
