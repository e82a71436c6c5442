"""Checkpoints: one ``.safetensors`` file holding the weights and, in its header, a JSON document
that rebuilds the network with no other file.

The header metadata key ``"tessera"`` holds::

    {"format_version": 1, "spec": "dcae-s48", "arch": "dcae", "config": {...},
     "latent_shape": [64, 1, 1], "compression_ratio": 48.0, "params": 2972876,
     "weights_sha256": "...", "stored_dtype": "float16", "training": {...}}

Nothing is ever unpickled: safetensors holds raw tensors only, and the header is parsed as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes

from .autoencoder import TileAutoencoder
from .build import build_from_config
from .config import ConfigError, config_from_dict, config_to_dict
from .presets import PRESETS, parse_spec

FORMAT_VERSION = 1
METADATA_KEY = "tessera"
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit
_STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded; the message names the file and the problem."""

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"checkpoint {self.path}: {problem}")


def weights_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the weights as stored: for each tensor in name order, its name, dtype, shape
    and raw bytes. Two files with the same hash hold bit-identical weights."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _storage_tensors(module: TileAutoencoder, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    tensors = {}
    for name, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu()
        if dtype is not None and tensor.is_floating_point():
            stored = tensor.to(dtype)
            if not torch.isfinite(stored).all():
                raise ValueError(f"{name} does not fit in {dtype} (values up to {tensor.abs().max().item():.3g}); "
                                 "store it in float32")
            tensor = stored
        tensors[name] = tensor.contiguous()
    return tensors


def save_checkpoint(module: TileAutoencoder, path: str | os.PathLike, metadata: dict | None = None,
                    dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Write ``module`` to one ``.safetensors`` file (atomically: readers see the old or the new file).

    Args:
        module: a network from ``tessera.model.build``.
        path: destination file.
        metadata: free-form training information (JSON-able), stored as ``info["training"]``;
            training code puts its metrics under ``metadata["metrics"]``.
        dtype: storage dtype of floating tensors, e.g. ``torch.float16`` for half-size files;
            ``None`` keeps the module's dtype.

    Returns:
        The header document (the ``info`` that :func:`load_checkpoint` will return).
    """
    module = getattr(module, "_orig_mod", module)  # torch.compile wrapper
    module = getattr(module, "module", module)  # DistributedDataParallel wrapper
    if not isinstance(module, TileAutoencoder):
        raise TypeError(f"expected a network from model.build, got {type(module).__name__}")
    if dtype is not None and dtype not in _STORAGE_DTYPES.values():
        raise ValueError(f"unsupported storage dtype {dtype}; known: {sorted(_STORAGE_DTYPES)}")
    tensors = _storage_tensors(module, dtype)
    floating = {str(t.dtype).removeprefix("torch.") for t in tensors.values() if t.is_floating_point()}
    info = {
        "format_version": FORMAT_VERSION,
        "spec": module.spec,
        "arch": module.arch,
        "config": config_to_dict(module.config),
        "latent_shape": list(module.latent_shape),
        "compression_ratio": module.compression_ratio,
        "params": module.num_params,
        "weights_sha256": weights_sha256(tensors),
        "stored_dtype": floating.pop() if len(floating) == 1 else "mixed",
        "training": dict(metadata or {}),
    }
    try:
        header = json.dumps(info, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ValueError(f"checkpoint metadata must be plain JSON (no NaN/inf, no objects): {error}") from None
    data = save_safetensors_bytes(tensors, metadata={METADATA_KEY: header, "format": "pt"})
    _atomic_write(Path(path), data)
    return info


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """The Tessera header document of a checkpoint, without loading the weights.

    Raises:
        CheckpointError: missing, truncated, not safetensors, or not a Tessera checkpoint.
    """
    data = _read_file(Path(path))
    return _parse(path, data)[0]


def _read_file(path: Path) -> bytes:
    if not path.is_file():
        raise CheckpointError(path, "no such file")
    return path.read_bytes()


def _parse(path: str | os.PathLike, data: bytes) -> tuple[dict[str, Any], dict[str, Any]]:
    """(Tessera document, safetensors header) after checking the file's structure and length."""
    if len(data) < 8:
        raise CheckpointError(path, f"not a safetensors file (only {len(data)} bytes; truncated or empty)")
    (header_len,) = struct.unpack("<Q", data[:8])
    looks_like_header = data[8:9] == b"{"  # the format requires the JSON header to open with "{"
    if not looks_like_header or header_len > _MAX_HEADER_BYTES:
        raise CheckpointError(path, "not a safetensors file (no JSON header at the start)")
    if 8 + header_len > len(data):
        raise CheckpointError(path, f"truncated: the {header_len}-byte header ends past the end of the "
                                    f"{len(data)}-byte file")
    try:
        header = json.loads(data[8:8 + header_len])
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(path, f"not a safetensors file (header is not JSON: {error})") from None
    if not isinstance(header, dict):
        raise CheckpointError(path, "not a safetensors file (header is not a JSON object)")
    data_len = len(data) - 8 - header_len
    try:
        needed = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        raise CheckpointError(path, "not a safetensors file (tensor entries without data_offsets)") from None
    if needed > data_len:
        raise CheckpointError(path, f"truncated: the header promises {needed} bytes of tensor data but the file "
                                    f"holds {data_len}")
    if needed < data_len:
        raise CheckpointError(path, f"corrupt: {data_len - needed} unexpected bytes after the tensor data")
    raw = (header.get("__metadata__") or {}).get(METADATA_KEY)
    if raw is None:
        raise CheckpointError(path, f"a safetensors file but not a Tessera checkpoint (no {METADATA_KEY!r} "
                                    "entry in its metadata)")
    try:
        doc = json.loads(raw)
    except json.JSONDecodeError as error:
        raise CheckpointError(path, f"its {METADATA_KEY!r} metadata is not JSON: {error}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(path, f"its {METADATA_KEY!r} metadata is not a JSON object")
    missing = [k for k in ("format_version", "arch", "config", "weights_sha256") if k not in doc]
    if missing:
        raise CheckpointError(path, f"its metadata lacks {missing}")
    if doc["format_version"] != FORMAT_VERSION:
        raise CheckpointError(path, f"format_version {doc['format_version']!r} is not supported "
                                    f"(this Tessera reads {FORMAT_VERSION})")
    return doc, header


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu",
                    dtype: torch.dtype | None = None) -> tuple[TileAutoencoder, dict[str, Any]]:
    """Rebuild the network of a checkpoint and load its weights; the module is in eval mode.

    Args:
        path: a file written by :func:`save_checkpoint`.
        device: where to put the module.
        dtype: floating dtype of the loaded module; ``None`` means float32 whatever the storage
            dtype (fp16 storage is for small files, not for computing on CPU).

    Returns:
        ``(module, info)``; ``info`` is the header document (format_version, spec, arch, config,
        latent_shape, compression_ratio, params, weights_sha256, stored_dtype, training).

    Raises:
        CheckpointError: missing file, truncated file, not safetensors, not a Tessera checkpoint,
            weights that fail their sha256, or a config that does not match the weights.
    """
    data = _read_file(Path(path))
    doc, _ = _parse(path, data)
    try:
        config = config_from_dict(doc["arch"], doc["config"])
    except (ConfigError, TypeError) as error:
        raise CheckpointError(path, f"its config cannot be built: {error}") from None
    try:
        tensors = load_safetensors_bytes(data)
    except Exception as error:  # safetensors raises its own error type for malformed files
        raise CheckpointError(path, f"unreadable tensor data: {error}") from None
    if weights_sha256(tensors) != doc["weights_sha256"]:
        raise CheckpointError(path, "the weights do not match weights_sha256 (the file is corrupted)")

    spec = doc.get("spec")
    if not isinstance(spec, str) or not _spec_matches(spec, config):
        spec = None  # the config is authoritative; the module gets its dot-list as spec
    with torch.device("meta"):
        module = build_from_config(config, spec)
    _check_weights(path, module, tensors)
    module = module.to_empty(device="cpu")
    module.load_state_dict(tensors, strict=True)
    module = module.to(device=device, dtype=dtype or torch.float32).eval()
    module.latent_stats = (doc.get("training") or {}).get("latent_stats")  # tessera latent-stats, for diffusion use
    return module, doc


def _spec_matches(spec: str, config: Any) -> bool:
    try:
        return parse_spec(spec)[1] == config if spec in PRESETS or "=" in spec else False
    except ConfigError:
        return False


def _check_weights(path: str | os.PathLike, module: TileAutoencoder, tensors: Mapping[str, torch.Tensor]) -> None:
    expected = {name: tuple(t.shape) for name, t in module.state_dict().items()}
    found = {name: tuple(t.shape) for name, t in tensors.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = [f"{n} {list(found[n])} (config needs {list(expected[n])})"
             for n in sorted(set(expected) & set(found)) if expected[n] != found[n]]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
        if wrong:
            parts.append(f"{len(wrong)} with other shapes (e.g. {wrong[:3]})")
        raise CheckpointError(path, "its config does not match the weights: " + "; ".join(parts))
