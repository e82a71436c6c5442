"""What the client returns: small frozen records built from the server's answers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tessera.client.errors import ProtocolError


@dataclass(frozen=True)
class EncodeResult:
    """Latents of every tile that was sent, in input order.

    Attributes:
        latents: float32 [N, *latent_shape].
        model: the model that encoded them.
        grids: (rows, cols) of every image input, in order; arrays of tiles have none.
        counts: how many tiles each input (image, path or array) contributed, in order.
        cached: how many latents the server answered from its cache.
        refined: the refinement steps every latent had (``encode(refine=...)``): fewer than
            asked when the server's deadline cut them short; None when none were asked for.
    """

    latents: np.ndarray
    model: str
    grids: tuple[tuple[int, int], ...] = ()
    counts: tuple[int, ...] = ()
    cached: int = 0
    refined: int | None = None

    @property
    def latent_shape(self) -> tuple[int, ...]:
        return tuple(self.latents.shape[1:])

    @property
    def grid(self) -> tuple[int, int] | None:
        """The grid of the one image that was encoded; None for arrays or several inputs."""
        return self.grids[0] if len(self.grids) == 1 and len(self.counts) == 1 else None

    def split(self) -> list[np.ndarray]:
        """The latents cut back into one array per input."""
        bounds = np.cumsum(self.counts)[:-1]
        return np.split(self.latents, bounds)


@dataclass(frozen=True)
class Limits:
    """How much one request may carry, as the server announces it."""

    max_tiles_per_request: int
    max_body_bytes: int
    max_batch_tiles: int

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Limits:
        return cls(
            max_tiles_per_request=int(data["max_tiles_per_request"]),
            max_body_bytes=int(data["max_body_bytes"]),
            max_batch_tiles=int(data.get("max_batch_tiles") or data["max_tiles_per_request"]),
        )


@dataclass(frozen=True)
class ModelInfo:
    """One model the server can run."""

    name: str
    default: bool
    arch: str
    spec: str
    params: int
    latent_shape: tuple[int, ...]
    compression_ratio: float
    weights_sha256: str
    metrics: dict[str, float] = field(default_factory=dict)
    channels: str = "RGB"  # "RGBA": the model keeps alpha
    latent_stats: dict[str, Any] | None = None  # mean, std, scaling_factor, shift_factor, per-channel
    decoders: tuple[str, ...] = ("faithful",)  # decode(decoder=...) values this model takes

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(
            name=str(data["name"]),
            default=bool(data.get("default", False)),
            arch=str(data.get("arch", "")),
            spec=str(data.get("spec", "")),
            params=int(data.get("params") or 0),
            latent_shape=tuple(int(d) for d in data["latent_shape"]),
            compression_ratio=float(data.get("compression_ratio") or 0.0),
            weights_sha256=str(data.get("weights_sha256", "")),
            metrics=dict(data.get("metrics") or {}),
            channels=str(data.get("channels") or "RGB"),
            latent_stats=dict(data["latent_stats"]) if isinstance(data.get("latent_stats"), dict) else None,
            decoders=tuple(str(d) for d in data.get("decoders") or ("faithful",)),
        )


@dataclass(frozen=True)
class Models:
    """The answer of GET /v1/models."""

    default: str
    models: tuple[ModelInfo, ...]
    limits: Limits

    @classmethod
    def from_json(cls, data: Any) -> Models:
        try:
            return cls(
                default=str(data["default"]),
                models=tuple(ModelInfo.from_json(m) for m in data["models"]),
                limits=Limits.from_json(data["limits"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"unexpected answer from /v1/models ({exc!r}); is this a Tessera server?") from None

    def get(self, name: str | None = None) -> ModelInfo:
        """The named model, or the default one."""
        name = name or self.default
        for info in self.models:
            if info.name == name:
                return info
        raise KeyError(f"unknown model {name!r}; known: {sorted(m.name for m in self.models)}")


@dataclass(frozen=True)
class Health:
    """Liveness and readiness of the server."""

    live: bool
    ready: bool
    info: dict[str, Any] = field(default_factory=dict)
