"""The cheapest honest yardstick for an autoencoder: PCA with as many components as the model has
latent values per tile, fitted on the model's own training tiles. A deep model that is barely
better than this linear map is not using its latent.

The fit is the eigendecomposition of the training tiles' covariance in float64; the basis is
cached beside the data set (``pca-rgb.npz`` / ``pca-rgba.npz``) under the data's manifest hash,
so later evaluations load it in milliseconds.

    pca = PCA.fit(TileData.open("data/corpus"), components=64)
    reconstruction = pca(x)  # (N, 3, 32, 32) in [0, 1], as a served tile is
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tessera.training.dataset import TileData

CACHED_COMPONENTS = 512  # components kept in the cache file: more than any bundled latent has values
CHUNK = 4096  # tiles per block of the covariance sum


def _cache_path(data: TileData, rgba: bool) -> Path:
    return Path(data.path) / f"pca-{'rgba' if rgba else 'rgb'}.npz"


def _fit_basis(tiles: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, eigenvectors (rows, by decreasing variance) and variances of uint8 tiles (N, 32, 32, C),
    flattened channels-first as a model sees them."""
    flat = tiles.transpose(0, 3, 1, 2).reshape(len(tiles), -1)
    mean = flat.mean(axis=0, dtype=np.float64) / 255.0
    cov = np.zeros((flat.shape[1], flat.shape[1]))
    for start in range(0, len(flat), CHUNK):
        block = flat[start : start + CHUNK].astype(np.float64) / 255.0 - mean
        cov += block.T @ block
    variances, vectors = np.linalg.eigh(cov / len(flat))
    order = np.argsort(variances)[::-1][:CACHED_COMPONENTS]
    return mean, vectors[:, order].T, variances[order]


def _save_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write atomically; a read-only data folder only means no cache."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
    except OSError:
        return
    with os.fdopen(fd, "wb") as handle:
        np.savez(handle, **arrays)
    os.replace(tmp, path)


class PCA(nn.Module):
    """Projection onto the first ``components`` principal directions and back, clamped to [0, 1]."""

    def __init__(self, mean: np.ndarray, basis: np.ndarray, channels: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.from_numpy(np.asarray(mean, dtype=np.float32)))
        self.register_buffer("basis", torch.from_numpy(np.asarray(basis, dtype=np.float32)))
        self.channels = channels

    @classmethod
    def fit(cls, data: TileData, components: int, rgba: bool = False) -> PCA:
        """PCA of ``data``'s training split (with alpha when ``rgba``), from the cache when it
        holds a fit of the same tiles."""
        if not 1 <= components <= CACHED_COMPONENTS:
            raise ValueError(f"components must be in [1, {CACHED_COMPONENTS}], got {components}")
        path = _cache_path(data, rgba)
        cached = None
        if path.exists():
            with np.load(path) as found:
                if str(found["manifest_sha256"]) == data.manifest_sha256:
                    cached = found["mean"], found["basis"]
        if cached is None:
            mean, basis, variances = _fit_basis(data.split("train/rgba" if rgba else "train"))
            _save_cache(path, mean=mean, basis=basis.astype(np.float32), variances=variances,
                        manifest_sha256=np.array(data.manifest_sha256))
            cached = mean, basis
        mean, basis = cached
        return cls(mean, basis[:components], 4 if rgba else 3)

    @property
    def components(self) -> int:
        return len(self.basis)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return (x.flatten(1) - self.mean) @ self.basis.T

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return (z @ self.basis + self.mean).reshape(len(z), self.channels, 32, 32).clamp(0, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))
