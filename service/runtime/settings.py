"""Service settings, read from ``TESSERA_*`` environment variables (or passed in directly).

    TESSERA_CHECKPOINTS=checkpoints TESSERA_MAX_BATCH_TILES=128 tessera serve

Every field below is one variable: the field name in upper case after ``TESSERA_``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "dcae-s48-f8c4-d32"  # the bundled ratio-48 DC-AE (4x4x4 latent, a decoder block at 32x32)


class Settings(BaseSettings):
    """Everything the service can be told; defaults serve the bundled checkpoints on this host."""

    model_config = SettingsConfigDict(env_prefix="TESSERA_", frozen=True, extra="forbid")

    # models
    checkpoints: Annotated[tuple[Path, ...], NoDecode] = Field(
        default=(Path("checkpoints"),),
        description="checkpoint folder(s) and/or .safetensors files, comma-separated; model name = file stem",
    )
    default_model: str | None = Field(
        default=None, description=f"model used when a request names none; unset: {DEFAULT_MODEL!r} if loaded, else the first by name"
    )
    device: str = Field(default="auto", description="auto (cuda when available), cpu, cuda or cuda:N")
    cuda_dtype: Literal["fp32", "fp16", "bf16"] = Field(default="fp32", description="compute dtype on CUDA: fp32, fp16 or bf16 (CPU always computes in fp32)")
    graph: Literal["trace", "eager"] = Field(
        default="trace",
        description="trace: model calls run as TorchScript graphs traced at start-up and checked against eager "
        "(no Python in the forward pass, so the event loop and the model thread do not wait on each other); eager: plain PyTorch",
    )
    torch_threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; unset: torch's default")
    skip_bad_checkpoints: bool = Field(
        default=False, description="start with the good checkpoints and list the bad ones under skipped in /v1/models (else a bad one stops the start)"
    )

    # batching
    max_batch_tiles: int = Field(default=64, ge=1, description="most tiles in one model call")
    max_wait_ms: float = Field(default=5.0, ge=0, description="a batch closes this long after its first tile (or when full, or when no other request is on its way)")
    batch_close_early: bool = Field(
        default=True,
        description="close a batch as soon as no other request is on its way (admitted, body still being read) instead of "
        "waiting out TESSERA_MAX_WAIT_MS; false: always wait the window (fuller batches for bulk clients, slower lone requests)",
    )
    max_queue_tiles: int = Field(default=4096, ge=1, description="most tiles waiting per model and operation; beyond: 503")
    request_timeout_s: float = Field(default=30.0, gt=0, description="a request not answered by then gets 504; its waiting tiles are dropped")
    shutdown_grace_s: float = Field(default=20.0, ge=0, description="time to finish accepted requests on shutdown")
    shutdown_delay_s: float = Field(
        default=0.0, ge=0,
        description="after SIGTERM, keep answering 503 (readyz too) at least this long, so load balancers see it before the port closes",
    )

    # request limits
    max_tiles_per_request: int = Field(default=1024, ge=1, description="most tiles (or latents) in one request; beyond: 413 (must not exceed TESSERA_MAX_QUEUE_TILES)")
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024, description="largest request body; beyond: 413")
    max_image_pixels: int = Field(default=4 * 1024 * 1024, ge=1024, description="largest image (width x height) accepted, checked from its header before decoding; beyond: 413")
    max_requests_in_flight: int = Field(
        default=256, ge=1, description="most /v1/encode and /v1/decode requests handled at once, counted from when "
        "their body has arrived; beyond: 503 with Retry-After"
    )
    max_uploads_in_flight: int = Field(
        default=512, ge=1, description="most /v1/encode and /v1/decode requests reading their body at once (a pool "
        "of its own, so slow uploads never hold the slots model work needs); beyond: 503 with Retry-After"
    )
    decode_timeout_s: float = Field(
        default=2.0, gt=0, description="an image (or JSON of images, or a large npy body) that takes longer to decode is refused with 422 decode_timeout; decoding runs off the event loop"
    )

    # HTTP layer (service.http.limits; `tessera serve` only)
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, description="largest request head (request line and headers); beyond: 431 and the connection closes")
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request head must arrive within this (from the connection, or from its first byte after an answer); beyond: 408, and a connection that sent nothing is closed"
    )
    body_timeout_s: float = Field(default=30.0, gt=0, description="a request body must arrive within this after its head; beyond: 408 and the connection closes (a stalled upload gives its upload slot back)")
    min_body_bytes_per_s: int = Field(
        default=1024, ge=0, description="after TESSERA_BODY_GRACE_S, a request body must have arrived at this many bytes "
        "per second on average, else 408 and the connection closes; 0: no minimum")
    body_grace_s: float = Field(default=2.0, gt=0, description="how long a body may arrive at any rate before "
                                                              "TESSERA_MIN_BODY_BYTES_PER_S applies")
    keep_alive_s: float = Field(default=5.0, gt=0, description="an idle keep-alive connection is closed after this")

    # cache (service.pipeline.cache)
    redis_url: str | None = Field(default=None, description="redis://host:port/db: the latent cache in Redis (shared by every api replica); unset: an in-process cache")
    cache_ttl_s: int = Field(default=7 * 24 * 3600, ge=1, description="lifetime of a cached latent, in seconds (Redis EX; the in-process cache expires entries too)")
    cache_max_bytes: int = Field(default=256 * 1024 * 1024, ge=0, description="size bound of the in-process LRU cache; 0 disables it (no effect with Redis)")
    cache_timeout_s: float = Field(default=0.25, gt=0, le=10, description="Redis socket timeout; a slower answer counts as a miss")
    cache_breaker_cooldown_s: float = Field(default=5.0, ge=0, le=300, description="after Redis failures, skip Redis this long before probing again")

    # access
    api_keys: str | None = Field(default=None, description="API keys, comma-separated, or @/path/file with one per line (# comments); when set, /v1/* needs Authorization: Bearer <key>")
    metrics_public: bool = Field(default=True, description="whether /metrics is readable without an API key")
    openapi_public: bool = Field(
        default=False, description="whether /openapi.json and /docs are readable without a key when TESSERA_API_KEYS is set (they name the loaded models and the limits)"
    )
    demo: bool = Field(
        default=True, description="serve the try-it page at /demo and its decoder ONNX files; false: 404"
    )

    # `tessera serve` only
    host: str = Field(default="127.0.0.1", description="address `tessera serve` listens on")
    port: int = Field(default=8000, ge=0, le=65535, description="port `tessera serve` listens on")

    @field_validator("checkpoints", mode="before")
    @classmethod
    def _split_paths(cls, value: object) -> object:
        if isinstance(value, (str, Path)):
            value = [part.strip() for part in str(value).split(",") if part.strip()]
        if isinstance(value, (list, tuple)) and not value:
            raise ValueError("no checkpoint path given; name a folder or .safetensors files")
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _check_limits(self) -> Settings:
        if self.max_tiles_per_request > self.max_queue_tiles:
            raise ValueError(
                f"max_tiles_per_request ({self.max_tiles_per_request}) exceeds max_queue_tiles ({self.max_queue_tiles}): "
                f"such a request could never be queued; raise TESSERA_MAX_QUEUE_TILES"
            )
        return self

    @property
    def max_wait_s(self) -> float:
        return self.max_wait_ms / 1000.0


def shown_default(field) -> str:
    """A setting's default as a user would type it."""
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def markdown_table() -> str:
    """The settings as the table docs/operations.md shows, derived from the fields (a test keeps
    the page equal to it): ``python -m tessera.service.runtime.settings``."""
    rows = ["| Variable | Default | Meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `TESSERA_{name.upper()}` | `{shown_default(field)}` | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(markdown_table())
