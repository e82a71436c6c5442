"""JSON bodies of the HTTP API: what requests may send and what responses hold.

Responses are built as plain dicts for speed; these models describe them in the OpenAPI schema
and validate the JSON request bodies.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt

TILE_PNG_EXAMPLE = (  # a 32x32 PNG tile: red top half, blue bottom half
    "iVBORw0KGgoAAAANSUhEUgAAACAAAAAgCAIAAAD8GO2jAAAAL0lEQVR42mM8wUBbwMQwasGoBaMWjFowasEQsICRgWHBaBCNWjBqwagFoxaMWgAAyzoBp6L37+UAAAAASUVORK5CYII="
)


class EncodeJSONRequest(BaseModel):
    """``application/json`` body of ``POST /v1/encode``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"images": [TILE_PNG_EXAMPLE]}]})

    images: list[str] = Field(min_length=1, description="base64 images (PNG or another safe format), each a tile or a sheet")


class DecodeJSONRequest(BaseModel):
    """``application/json`` body of ``POST /v1/decode``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"latents": [[0.0] * 64], "columns": 1}]})

    latents: list[list[StrictFloat]] | list[list[list[list[StrictFloat]]]] = Field(  # true/false are no numbers
        min_length=1, description="[N, *latent_shape] or flattened [N, prod(latent_shape)]"
    )
    columns: StrictInt | None = Field(default=None, ge=1, le=4096, description="sheet width in tiles (the query's columns wins)")


class EncodeResponse(BaseModel):
    model: str
    latent_shape: list[int]
    dtype: Literal["float32"]
    count: int = Field(description="number of tiles encoded")
    grid: list[int] | None = Field(description="[rows, cols] when the body was one image, else null")
    grids: list[list[int]] = Field(description="[rows, cols] of every input image; [] for npy input")
    cached: int = Field(description="tiles answered from the latent cache")
    refined: int | None = Field(
        default=None, description="refinement steps that ran when ?refine= asked for some (fewer than asked when the "
        "request's deadline or a full queue came first); null when not asked")
    latents: list[Any] = Field(description="[count, *latent_shape] nested lists of floats")


class DecodeResponse(BaseModel):
    model: str
    count: int
    tiles: list[str] = Field(description="base64 32x32 PNG tiles, in order: RGB, or RGBA for RGBA models")


class LatentStats(BaseModel):
    """``z_diffusion = (z - shift_factor) * scaling_factor`` gives latents of about unit variance."""

    mean: float
    std: float
    scaling_factor: float = Field(description="1 / std, as diffusers' AutoencoderDC config calls it")
    shift_factor: float = Field(description="the mean")
    channel_mean: list[float] = Field(description="per latent channel")
    channel_std: list[float] = Field(description="per latent channel")
    tiles: int = Field(description="training tiles the statistics were computed over")


class ModelInfo(BaseModel):
    name: str
    default: bool
    arch: str
    spec: str
    params: int
    channels: Literal["RGB", "RGBA"] = Field(
        description="RGB: alpha is multiplied into the colours (transparent -> black); RGBA: alpha goes in and comes back")
    latent_shape: list[int]
    compression_ratio: float
    weights_sha256: str
    metrics: dict[str, Any] = Field(description="validation metrics from training (val_l1, val_mse, val_psnr), {} when none")
    latent_stats: LatentStats | None = Field(
        description="the latents' statistics over the training corpus, for latent diffusion; null when not computed")
    device: str = Field(description="where the model runs: cpu or cuda[:N]")
    dtype: str = Field(description="inference dtype: float32, float16 or bfloat16")
    graph: Literal["trace", "eager"] = Field(description="trace: model calls run as TorchScript graphs (TESSERA_GRAPH); eager: plain PyTorch")
    decoders: list[str] = Field(description="the decoders of its latents, for POST /v1/decode?decoder=: faithful "
                                            "(its own) and, where a sharp one is served, sharp")


class Limits(BaseModel):
    max_tiles_per_request: int
    max_body_bytes: int
    max_batch_tiles: int


class SkippedModel(BaseModel):
    name: str
    file: str
    reason: str = Field(description="why the checkpoint could not be loaded")


class ModelsResponse(BaseModel):
    default: str
    models: list[ModelInfo]
    skipped: list[SkippedModel] = Field(
        default=[], description="checkpoints left out because they cannot be loaded (TESSERA_SKIP_BAD_CHECKPOINTS)"
    )
    limits: Limits


class ErrorResponse(BaseModel):
    detail: str = Field(description="what was wrong and how to fix it")
    code: str = Field(description="short snake_case code, e.g. unknown_model, too_large, overloaded")


class HealthResponse(BaseModel):
    status: Literal["ok", "ready"]
