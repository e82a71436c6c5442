"""The loaded models: checkpoints found, loaded once, each with its own batching workers.

A model's name is its checkpoint's file stem (``checkpoints/dcae-s48.safetensors`` ->
``dcae-s48``). Each model gets three batchers (encode, decode, and refine: one step of encode
effort), each with its thread; calls of one model run one at a time, in order.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tessera.service.batching.batcher import Batcher
from tessera.service.runtime.clock import MONOTONIC, Clock
from tessera.service.pipeline.codecs import TILE
from tessera.service.errors import UnknownDecoder, UnknownModel
from tessera.service.runtime.events import EventSink
from tessera.service.batching.graphs import channels_of, make_calls, make_refine_call
from tessera.service.runtime.lifecycle import Lifecycle
from tessera.service.runtime.settings import DEFAULT_MODEL, Settings
from tessera.tiles import DECODERS

logger = logging.getLogger(__name__)

CUDA_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
OPS = ("encode", "decode")


PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".pkl", ".pickle")
PICKLE_PROBLEM = (
    "a pickle-based PyTorch file (torch.save), not safetensors; Tessera never unpickles files, as that can run "
    "code: convert it where you trust it (model.save_checkpoint) or remove it"
)


class RegistryError(ValueError):
    """The configured checkpoints cannot be served (none found, duplicate names, bad default)."""


@dataclass(frozen=True)
class Skipped:
    """A checkpoint left out under ``TESSERA_SKIP_BAD_CHECKPOINTS``, and why."""

    name: str
    file: str  # the file name only: API clients need not learn the server's paths
    reason: str


def find_checkpoints(paths: tuple[Path, ...]) -> dict[str, Path]:
    """Model name -> checkpoint file, from folders (every ``*.safetensors`` in them) and files."""
    found: dict[str, Path] = {}
    for path in paths:
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
        elif path.is_file():
            files = [path]
        else:
            raise RegistryError(f"checkpoint path {str(path)!r} does not exist; set TESSERA_CHECKPOINTS to a folder or files")
        for file in files:
            if file.stem in found and found[file.stem] != file:
                raise RegistryError(f"two checkpoints are named {file.stem!r}: {found[file.stem]} and {file}; rename one")
            found[file.stem] = file
    if not found:
        raise RegistryError(
            f"no .safetensors checkpoints in {', '.join(map(str, paths))}; train one (`tessera train`) "
            f"or point TESSERA_CHECKPOINTS at the bundled checkpoints/ folder"
        )
    return dict(sorted(found.items()))


def find_pickles(paths: tuple[Path, ...]) -> list[Path]:
    """Pickle-based PyTorch files (``.pt`` and the like) lying in the checkpoint folders: they are
    reported as bad checkpoints rather than silently ignored."""
    return sorted(f for path in paths if path.is_dir() for f in path.iterdir() if f.suffix.lower() in PICKLE_SUFFIXES)


def read_checkpoint(path: Path, device: str, dtype) -> tuple[Any, dict]:
    """``model.load_checkpoint`` with every failure as one ``CheckpointError`` naming the file."""
    from tessera.model import CheckpointError, load_checkpoint

    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(path, PICKLE_PROBLEM)
    try:
        return load_checkpoint(path, device=device, dtype=dtype)
    except CheckpointError:
        if _looks_pickled(path):
            raise CheckpointError(path, f"{PICKLE_PROBLEM} (despite its {path.suffix} name)") from None
        raise
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read: {exc.strerror or exc}") from None
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError) as exc:
        raise CheckpointError(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None


def _looks_pickled(path: Path) -> bool:
    """torch.save's zip container, or a bare pickle (protocol 2+: PROTO, then an opcode; a
    safetensors header length of that size would have a zero third byte)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4)
    except OSError:
        return False
    return head.startswith(b"PK\x03\x04") or (len(head) == 4 and head[0] == 0x80 and 2 <= head[1] <= 5 and head[2] != 0)


def resolve_device(setting: str) -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda") and not torch.cuda.is_available():
        raise RegistryError(f"device {setting!r} asked for but CUDA is not available; use TESSERA_DEVICE=cpu or auto")
    return setting


@dataclass(frozen=True)
class Variant:
    """One decoder of a model's latents: its batcher, and the checkpoint that holds it."""

    batcher: Batcher = field(repr=False)
    path: Path
    key: str  # the checkpoint's weights sha256


@dataclass
class ServedModel:
    """One loaded checkpoint and the batchers that serve it."""

    name: str
    path: Path
    module: Any = field(repr=False)
    info: dict = field(repr=False)
    latent_shape: tuple[int, ...]
    channels: int  # of the tiles it takes and gives: 3 (RGB, alpha multiplied in) or 4 (RGBA)
    device: str
    dtype: str
    encoder: Batcher = field(repr=False)
    decoder: Batcher = field(repr=False)
    refiner: Batcher = field(repr=False)  # one refinement step of many tiles' latents (encode ?refine=)
    graph: str  # how the model calls run: "trace" (TorchScript graphs, service.batching.graphs) or "eager"
    variants: dict[str, Variant] = field(default_factory=dict, repr=False)  # other decoders of its latents, by name

    def variant(self, name: str | None) -> Variant:
        """The named decoder (``DECODERS``; None or "faithful": the model's own) as a ``Variant``."""
        if name in (None, DECODERS[0]):
            return Variant(self.decoder, self.path, self.key)
        found = self.variants.get(name)
        if found is None:
            raise UnknownDecoder(f"model {self.name!r} has no {name!r} decoder; its decoders: {self.decoder_names} "
                                 f"(GET /v1/models)")
        return found

    def decoder_for(self, name: str | None) -> Batcher:
        """The batcher of the named decoder."""
        return self.variant(name).batcher

    @property
    def decoder_names(self) -> list[str]:
        return [DECODERS[0], *self.variants]

    @property
    def key(self) -> str:
        """The weights' sha256: identifies the model in the latent cache."""
        return self.info["weights_sha256"]

    @property
    def metrics(self) -> dict:
        training = self.info.get("training") or {}
        metrics = training.get("metrics") if isinstance(training, dict) else None
        return dict(metrics) if isinstance(metrics, dict) else {}

    @property
    def latent_stats(self) -> dict | None:
        """Mean and std of its latents over its training corpus (``tessera latent-stats``), as
        ``model.load_checkpoint`` found them."""
        stats = getattr(self.module, "latent_stats", None)
        return stats if isinstance(stats, dict) else None

    @property
    def batchers(self) -> tuple[Batcher, ...]:
        return self.encoder, self.decoder, self.refiner, *(v.batcher for v in self.variants.values())

    def describe(self, default: str) -> dict:
        return {
            "name": self.name,
            "default": self.name == default,
            "arch": self.info.get("arch", getattr(self.module, "arch", "unknown")),
            "spec": str(self.info.get("spec") or getattr(self.module, "spec", "")),
            "params": int(self.info.get("params") or sum(p.numel() for p in self.module.parameters())),
            "channels": "RGBA" if self.channels == 4 else "RGB",
            "latent_shape": list(self.latent_shape),
            "compression_ratio": float(self.info.get("compression_ratio") or self.module.compression_ratio),
            "weights_sha256": self.key,
            "metrics": self.metrics,
            "latent_stats": self.latent_stats,
            "device": self.device,
            "dtype": self.dtype,
            "graph": self.graph,
            "decoders": self.decoder_names,
        }


class Registry:
    """Every served model by name, and the default one; their batchers run on ``clock``."""

    def __init__(self, models: dict[str, ServedModel], default: str, skipped: tuple[Skipped, ...] = (),
                 clock: Clock = MONOTONIC) -> None:
        if default not in models:
            raise RegistryError(f"default model {default!r} is not loaded; loaded: {sorted(models)}")
        self.models = models
        self.default = default
        self.skipped = skipped
        self.clock = clock

    def get(self, name: str | None) -> ServedModel:
        """The named model (the default when None); ``UnknownModel`` lists the known ones."""
        model = self.models.get(name or self.default)
        if model is None:
            raise UnknownModel(f"unknown model {name!r}; loaded models: {sorted(self.models)} (GET /v1/models)")
        return model

    def batchers(self) -> list[Batcher]:
        return [b for model in self.models.values() for b in model.batchers]

    def start(self, events: EventSink, lifecycle: Lifecycle) -> None:
        """Start every batcher (warm-up first), reporting to ``events`` and ``lifecycle``."""
        for batcher in self.batchers():
            batcher.events, batcher.lifecycle = events, lifecycle
            batcher.start()

    def stuck_reason(self, stuck_after_s: float) -> str | None:
        """A model call running longer than ``stuck_after_s`` (a hung device), or None."""
        for batcher in self.batchers():
            running = batcher.call_running_s()
            if running is not None and running > stuck_after_s:
                return f"{batcher.name}: a model call has been running for {running:.0f} s; the device may be hung, restart"
        return None

    async def stop(self) -> int:
        """Stop every batcher; the number of requests they failed with ``ShuttingDown``."""
        left = await asyncio.gather(*(b.stop() for b in self.batchers()))
        return sum(left)


def choose_default(settings: Settings, names: list[str], skipped: tuple[Skipped, ...] = ()) -> str:
    if settings.default_model is not None:
        reasons = {s.name: s.reason for s in skipped}
        if settings.default_model in reasons:
            raise RegistryError(
                f"TESSERA_DEFAULT_MODEL={settings.default_model!r} cannot be loaded: {reasons[settings.default_model]}"
            )
        if settings.default_model not in names:
            raise RegistryError(
                f"TESSERA_DEFAULT_MODEL={settings.default_model!r} is not among the loaded models {names}; pick one of them"
            )
        return settings.default_model
    return DEFAULT_MODEL if DEFAULT_MODEL in names else names[0]


def serve_checkpoint(name: str, path: Path, settings: Settings, device: str, dtype, clock: Clock) -> ServedModel:
    """One checkpoint loaded, its calls made (traced or eager) and its two batchers set up;
    raises ``model.CheckpointError``."""
    start = time.monotonic()
    module, info = read_checkpoint(path, device, dtype)
    module.eval()
    latent_shape = tuple(int(d) for d in module.latent_shape)
    channels = channels_of(module)
    encode, decode, graph = make_calls(module, device, dtype, settings.graph, name)
    warm = settings.max_batch_tiles  # one full batch: also proves it fits in memory
    common = {
        "max_batch_tiles": settings.max_batch_tiles,
        "max_wait_s": settings.max_wait_s,
        "max_queue_tiles": settings.max_queue_tiles,
        "model_lock": threading.Lock(),  # shared: one model call of this model at a time
        "close_early": settings.batch_close_early,
        "clock": clock,
    }
    encoder = Batcher(name, "encode", encode, warmup=np.zeros((warm, TILE, TILE, channels), np.uint8), **common)
    decoder = Batcher(name, "decode", decode, warmup=np.zeros((warm, *latent_shape), np.float32), **common)
    # no warm-up sweep for the refiner: opt-in work, whose eager steps at every batch size would
    # double the time to ready
    refiner = Batcher(name, "refine", make_refine_call(module, device, dtype), **common)
    dtype_name = str(dtype).removeprefix("torch.")
    logger.info(
        "loaded %s from %s (%s, %s, latent %s, %s on %s, %s) in %.2f s",
        name, path, info.get("arch"), "RGBA" if channels == 4 else "RGB", latent_shape, dtype_name, device, graph, time.monotonic() - start,
    )
    return ServedModel(name, path, module, info, latent_shape, channels, device, dtype_name, encoder, decoder, refiner,
                       graph)


def split_variants(files: dict[str, Path]) -> tuple[dict[str, Path], dict[str, dict[str, Path]]]:
    """Checkpoints by model name, and the decoder variants among them by model and decoder name:
    ``<model>.<decoder>.safetensors`` (a decoder of ``DECODERS`` other than the model's own) beside
    ``<model>.safetensors``. A file so named without its model beside it stays a model of its own."""
    variants: dict[str, dict[str, Path]] = {}
    for name, path in files.items():
        base, _, decoder = name.rpartition(".")
        if base in files and decoder in DECODERS[1:]:
            variants.setdefault(base, {})[decoder] = path
    taken = {path for found in variants.values() for path in found.values()}
    return {name: path for name, path in files.items() if path not in taken}, variants


def serve_variant(base: ServedModel, decoder: str, path: Path, settings: Settings, device: str, dtype) -> Variant:
    """The batcher of ``base``'s decoder ``decoder`` from checkpoint ``path``, which must be ``base``'s
    network with the same encoder weights (it decodes the same latents); raises ``CheckpointError``."""
    import torch

    from tessera.model import CheckpointError

    module, info = read_checkpoint(path, device, dtype)
    module.eval()
    if info.get("arch") != base.info.get("arch") or info.get("config") != base.info.get("config"):
        raise CheckpointError(path, f"is not a decoder of {base.name}: its network differs ({info.get('spec')} "
                                    f"against {base.info.get('spec')})")
    mine, theirs = module.encoder.state_dict(), base.module.encoder.state_dict()
    if any(not torch.equal(mine[k], theirs[k]) for k in theirs):
        raise CheckpointError(path, f"is not a decoder of {base.name}: its encoder weights differ, so its latents "
                                    "would not be the model's")
    _, decode, _ = make_calls(module, device, dtype, settings.graph, f"{base.name}.{decoder}")
    warm = np.zeros((settings.max_batch_tiles, *base.latent_shape), np.float32)
    batcher = Batcher(base.name, f"decode-{decoder}", decode, warmup=warm, max_batch_tiles=settings.max_batch_tiles,
                      max_wait_s=settings.max_wait_s, max_queue_tiles=settings.max_queue_tiles,
                      model_lock=base.decoder.model_lock, close_early=settings.batch_close_early,
                      clock=base.decoder.clock)
    logger.info("loaded the %s decoder of %s from %s", decoder, base.name, path)
    return Variant(batcher, path, info["weights_sha256"])


def load_registry(settings: Settings, clock: Clock = MONOTONIC) -> Registry:
    """Load every configured checkpoint and set up its batchers (not started).

    A checkpoint that cannot be loaded (truncated, not safetensors, a pickle, a config that does
    not match its weights) stops the loading, unless ``settings.skip_bad_checkpoints``: then it
    is logged, left out and listed in ``Registry.skipped``. The batchers run on ``clock``.

    Raises ``RegistryError`` or ``model.CheckpointError`` with one line naming the file and the problem.
    """
    import torch

    from tessera.model import CheckpointError

    if settings.torch_threads is not None:
        torch.set_num_threads(settings.torch_threads)
    device = resolve_device(settings.device)
    dtype_name = CUDA_DTYPES[settings.cuda_dtype] if device.startswith("cuda") else "float32"
    dtype = getattr(torch, dtype_name)
    skipped: list[Skipped] = []

    def skip(exc: CheckpointError, path: Path) -> None:
        if not settings.skip_bad_checkpoints:
            raise exc
        logger.warning("skipping %s (TESSERA_SKIP_BAD_CHECKPOINTS): %s", exc.path, exc.problem)
        skipped.append(Skipped(path.stem, path.name, exc.problem))

    for path in find_pickles(settings.checkpoints):
        skip(CheckpointError(path, PICKLE_PROBLEM), path)
    files, variants = split_variants(find_checkpoints(settings.checkpoints))
    choose_default(settings, list(files))  # an unknown TESSERA_DEFAULT_MODEL fails before anything loads
    models: dict[str, ServedModel] = {}
    for name, path in files.items():
        try:
            models[name] = serve_checkpoint(name, path, settings, device, dtype, clock)
        except CheckpointError as exc:
            skip(exc, path)
            continue
        for decoder, variant in variants.get(name, {}).items():
            try:
                models[name].variants[decoder] = serve_variant(models[name], decoder, variant, settings, device, dtype)
            except CheckpointError as exc:
                skip(exc, variant)
    if not models:
        problems = "; ".join(f"{s.file}: {s.reason}" for s in skipped)
        raise RegistryError(f"no checkpoint could be loaded ({problems})")
    return Registry(models, choose_default(settings, list(models), tuple(skipped)), tuple(skipped), clock)
