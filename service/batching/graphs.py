"""The model calls the batchers run, eager or as TorchScript graphs (``TESSERA_GRAPH``).

A call is a whole step from wire arrays to wire arrays, conversions included:

- encode: uint8 tiles [N, 32, 32, C] -> float32 latents [N, *latent_shape]
- decode: latents [N, *latent_shape] -> uint8 tiles [N, 32, 32, C] (NaN -> 0, clamped, rounded)

C is the model's channel count: 3 (RGB) or 4 (RGBA).

Why graphs: model calls run in a worker thread beside the event loop, and an eager call takes
Python's GIL back after each of its few hundred small ops. While the event loop is busy, each
of those takes waits for the loop to let go (up to the interpreter's switch interval): eager
calls beside a busy Python thread were many times slower than alone (docs/benchmarks.md, "model
call, GIL"). A traced, frozen graph runs the whole call in C++ with the GIL released, and takes
it back once, at the end.

Graphs are traced for 32x32 tiles (the only size the service takes) and checked against the
eager call on random inputs at other batch sizes; a tracing failure or any difference beyond
float tolerance keeps that model eager, and the log says why.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from tessera.tiles import TILE

logger = logging.getLogger(__name__)

TRACE_BATCH = 4  # the example batch the graphs are traced with
CHECK_BATCHES = (1, 3, 17)  # batch sizes they are checked at, against eager


class GraphError(RuntimeError):
    """A model call could not be turned into a graph that matches the eager call."""


def calls(module, dtype) -> tuple[Any, Any]:
    """The encode and decode calls of ``module`` as two ``nn.Module``s (eager)."""
    import torch

    class Encode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, tiles: torch.Tensor) -> torch.Tensor:
            # (N, C, 32, 32) in [0, 1], laid out NCHW: the permuted view would run the network channels-last
            x = tiles.permute(0, 3, 1, 2).to(dtype, memory_format=torch.contiguous_format).div(255)
            return self.model.encode(x).float()

    class Decode(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = module

        def forward(self, latents: torch.Tensor) -> torch.Tensor:
            x = self.model.decode(latents.to(dtype)).float()  # (N, C, 32, 32), not clamped
            x = torch.nan_to_num(x, nan=0.0).clamp(0, 1).mul(255).round().to(torch.uint8)
            return x.permute(0, 2, 3, 1).contiguous()  # (N, 32, 32, C)

    return Encode().eval(), Decode().eval()


def trace(call, example, checks: list, rtol: float, atol: float) -> Any:
    """``call`` traced on ``example``, frozen, and checked against itself on ``checks``."""
    import torch

    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape-dependent branches: 32x32 is fixed
            graph = torch.jit.freeze(torch.jit.trace(call, example, check_trace=False))
            for x in checks:
                torch.testing.assert_close(graph(x), call(x), rtol=rtol, atol=atol)
    except Exception as exc:  # tracing fails in many ways; the model then runs eager
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise GraphError(f"{type(call).__name__.lower()}: {type(exc).__name__}: {first}") from exc
    return graph


Call = Callable[[np.ndarray], np.ndarray]


def channels_of(module) -> int:
    """The channels a model's tiles have: 3 (RGB) or 4 (RGBA; ``config.in_channels`` says)."""
    return int(getattr(getattr(module, "config", None), "in_channels", 3))


def make_calls(module, device: str, dtype, graph: str = "trace", name: str = "model") -> tuple[Call, Call, str]:
    """numpy-in, numpy-out encode and decode calls of ``module``, and how they run: ``graph``
    ("trace" or "eager"), or "eager" when the graphs could not be traced or failed the check
    (logged as a warning naming ``name``)."""
    if graph == "trace":
        try:
            return (*_numpy_calls(*_traced_calls(module, device, dtype), device), "trace")
        except GraphError as exc:
            logger.warning("%s runs eager: its model calls could not be traced (%s)", name, exc)
    return (*_numpy_calls(*calls(module, dtype), device), "eager")


def _traced_calls(module, device: str, dtype) -> tuple[Any, Any]:
    """The frozen, checked graphs of ``calls(module, dtype)``; raises ``GraphError``."""
    import torch

    encode_call, decode_call = calls(module, dtype)
    rng = torch.Generator().manual_seed(0)
    latent_shape = tuple(int(d) for d in module.latent_shape)
    channels = channels_of(module)

    def tiles(n: int) -> torch.Tensor:
        return torch.randint(0, 256, (n, TILE, TILE, channels), dtype=torch.uint8, generator=rng).to(device)

    def latents(n: int) -> torch.Tensor:
        return torch.randn(n, *latent_shape, generator=rng).to(device)

    tol = 1e-4 if dtype == torch.float32 else 2e-2  # fp16/bf16 graphs may fuse ops in another order
    encode_call = trace(encode_call, tiles(TRACE_BATCH), [tiles(n) for n in CHECK_BATCHES], rtol=tol, atol=tol)
    decode_call = trace(decode_call, latents(TRACE_BATCH), [latents(n) for n in CHECK_BATCHES], rtol=0, atol=1)  # uint8: one rounding step
    return encode_call, decode_call


def _numpy_calls(encode_call, decode_call, device: str) -> tuple[Call, Call]:
    import torch

    on_cpu = device == "cpu"

    # On the CPU a call is one entry into torch and one way back (no .to()/.cpu(), each of
    # which would give up the GIL and wait to take it back while the event loop is busy).
    def encode(tiles: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(np.require(tiles, requirements="CW"))
            z = encode_call(x if on_cpu else x.to(device, non_blocking=True))
            return (z if on_cpu else z.cpu()).numpy()

    def decode(latents: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            z = torch.from_numpy(np.require(latents, requirements="CW"))
            x = decode_call(z if on_cpu else z.to(device, non_blocking=True))
            return (x if on_cpu else x.cpu()).numpy()

    return encode, decode


def make_refine_call(module, device: str, dtype) -> Call:
    """One refinement step (``tessera.model.refine``) of packed rows, numpy in and out: rows of many
    tiles, each at its own step, move one Adam step together. Eager: it needs the decoder's
    gradient with respect to the latents."""
    import torch

    from tessera.model.refine import pack, refine_step, unpack

    channels, latent_shape = channels_of(module), tuple(int(d) for d in module.latent_shape)

    def decode(z: torch.Tensor) -> torch.Tensor:
        return module.decode(z.to(dtype))

    def refine(rows: np.ndarray) -> np.ndarray:
        packed = torch.from_numpy(np.require(rows, np.float32, requirements="C")).to(device)
        x, z, m, v, t = unpack(packed, channels, latent_shape)
        z, m, v, t = refine_step(decode, x, z, m, v, t)
        return pack(x, z, m, v, t).cpu().numpy()

    return refine
