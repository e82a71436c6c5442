"""A checkpoint's encoder and decoder as ONNX models, for game engines, browsers and any ONNX runtime.

    tessera export onnx checkpoints/dcae-s48.safetensors --part decoder
    # -> checkpoints/dcae-s48.decoder.onnx

The graphs speak float32 NCHW with a dynamic batch:

- encoder: ``tiles`` float32 [N, C, 32, 32] in [0, 1] -> ``latents`` float32 [N, *latent_shape];
- decoder: ``latents`` float32 [N, *latent_shape] -> ``tiles`` float32 [N, C, 32, 32], clamped to
  [0, 1] (multiply by 255 and round for 8-bit pixels, as the service does).

C is 3 (RGB, colour multiplied by alpha) for today's models. Each file carries its metadata
(``custom_metadata_map`` in onnxruntime): ``tessera_part``, ``latent_shape``,
``compression_ratio``, ``channels``, ``weights_sha256``, ``arch``, ``spec`` and the source
``checkpoint`` name, so a user can tell which weights a file holds without Tessera.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

from .autoencoder import TileAutoencoder
from .checkpoint import load_checkpoint
from .config import TILE_SIZE

PARTS = ("encoder", "decoder")
OPSET = 18
EXAMPLE_BATCH = 4


class _Encoder(nn.Module):
    def __init__(self, model: TileAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, tiles: torch.Tensor) -> torch.Tensor:
        return self.model.encode(tiles)


class _Decoder(nn.Module):
    def __init__(self, model: TileAutoencoder) -> None:
        super().__init__()
        self.model = model

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents).clamp(0, 1)


def graph_of(model: TileAutoencoder, part: str) -> tuple[nn.Module, torch.Tensor, str, str]:
    """The module to export for ``part``, an example input, and the input and output names."""
    channels = model.config.in_channels
    if part == "encoder":
        return _Encoder(model).eval(), torch.rand(EXAMPLE_BATCH, channels, TILE_SIZE, TILE_SIZE), "tiles", "latents"
    if part == "decoder":
        return _Decoder(model).eval(), torch.randn(EXAMPLE_BATCH, *model.latent_shape), "latents", "tiles"
    raise ValueError(f"unknown part {part!r}; known: {list(PARTS)}")


def export_part(model: TileAutoencoder, part: str, out: Path, metadata: dict[str, str]) -> Path:
    """Write ``part`` of ``model`` to ``out`` (ONNX, opset ``OPSET``, dynamic batch) with ``metadata``."""
    import onnx

    module, example, input_name, output_name = graph_of(model, part)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes about optional packages (torchvision)
        # optimize=False: the exporter's graph optimiser drops LiteMLA's "+ eps" in the attention's
        # normaliser, and a column that sums to zero (a black tile does it) then gives 0/0 = NaN
        program = torch.onnx.export(module, (example,), input_names=[input_name], output_names=[output_name],
                                    dynamic_shapes={input_name: {0: batch}}, opset_version=OPSET, dynamo=True,
                                    optimize=False, verbose=False)
    proto = program.model_proto
    for key, value in {**metadata, "tessera_part": part}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    out.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(proto, str(out))
    return out


def export_checkpoint(checkpoint: str | Path, parts: tuple[str, ...] = PARTS, out: str | Path | None = None) -> list[Path]:
    """Export ``parts`` of ``checkpoint``; files are ``<out>.<part>.onnx`` (``out`` defaults to the
    checkpoint's path without its suffix)."""
    checkpoint = Path(checkpoint)
    model, info = load_checkpoint(checkpoint)
    model = model.float().eval()
    prefix = Path(out) if out is not None else checkpoint.with_suffix("")
    channels = model.config.in_channels
    metadata = {
        "latent_shape": json.dumps(list(model.latent_shape)),
        "compression_ratio": f"{model.compression_ratio:g}",
        "channels": {3: "RGB", 4: "RGBA"}.get(channels, str(channels)),
        "weights_sha256": info["weights_sha256"],
        "arch": info["arch"],
        "spec": str(info.get("spec") or ""),
        "checkpoint": checkpoint.name,
        "layout": f"float32 NCHW, tiles in [0, 1] with {channels} channels, dynamic batch",
    }
    return [export_part(model, part, prefix.with_name(f"{prefix.name}.{part}.onnx"), metadata) for part in parts]
