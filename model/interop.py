"""Conversion between Tessera's DC-AE and ``diffusers.AutoencoderDC``, with identical weights.

diffusers is an optional dependency (``pip install 'tessera[diffusers]'``) and is imported only
when a conversion runs. diffusers fixes a few choices that upstream leaves open (the encoder's
blocks use trms2d + silu, EfficientViT blocks use silu and an RMS-normed GLU, no encoder output
norm); a config outside that space raises ``ValueError`` naming the setting.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import torch

from .config import DCAEConfig, DecoderConfig, EncoderConfig
from .dcae import DCAE

if TYPE_CHECKING:
    from diffusers import AutoencoderDC

_NORMS = {"bn2d": "batch_norm", "trms2d": "rms_norm"}
_DOWNSAMPLE = {"ConvPixelUnshuffle": "pixel_unshuffle", "Conv": "conv"}
_UPSAMPLE = {"ConvPixelShuffle": "pixel_shuffle", "InterpolateConv": "interpolate"}
_EVIT_SCALES = {"EViT_GLU": (), "EViTS5_GLU": (5,)}

# Tessera -> diffusers names of sub-modules inside one stage block ("<side>.<down|up>_blocks.i.j.").
_RENAMES = (("attn.multiscale.", "attn.to_qkv_multiscale."), ("attn.norm.", "attn.norm_out."), ("glu.", "conv_out."))
_IN_BLOCK = re.compile(r"^(\w+\.(?:down|up)_blocks\.\d+\.\d+\.)(.*)$")


def _rename(name: str, reverse: bool) -> str:
    match = _IN_BLOCK.match(name)
    if match is None:
        return name
    prefix, rest = match.groups()
    for ours, theirs in _RENAMES:
        old, new = (theirs, ours) if reverse else (ours, theirs)
        if rest.startswith(old):
            return prefix + new + rest[len(old):]
    return name


def _block_args(block_types: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[tuple[int, ...], ...]]:
    names = tuple("ResBlock" if b == "ResBlock" else "EfficientViTBlock" for b in block_types)
    scales = tuple(_EVIT_SCALES.get(b, ()) for b in block_types)
    return names, scales


def _require(ok: bool, problem: str) -> None:
    if not ok:
        raise ValueError(f"diffusers.AutoencoderDC cannot represent this DC-AE: {problem}")


def _check_representable(cfg: DCAEConfig) -> None:
    enc, dec = cfg.encoder, cfg.decoder
    _require(enc.norm == "trms2d" and enc.act == "silu",
             f"encoder norm/act must be trms2d/silu, got {enc.norm}/{enc.act}")
    _require(enc.out_norm is None and enc.out_act is None, "encoder out_norm/out_act must be None")
    _require(enc.downsample_shortcut == "averaging", "encoder.downsample_shortcut must be 'averaging'")
    _require(dec.upsample_shortcut == "duplicating", "decoder.upsample_shortcut must be 'duplicating'")
    _require(dec.out_norm == "trms2d", f"decoder.out_norm must be trms2d, got {dec.out_norm}")
    _require(dec.out_act in ("relu", "silu"), f"decoder.out_act must be relu or silu, got {dec.out_act}")
    for i, (block, norm, act, depth) in enumerate(zip(dec.block_types, dec.norms, dec.acts, dec.depth_list)):
        if depth == 0:
            continue
        if block == "ResBlock":
            # diffusers' gelu is the exact erf form; upstream (and Tessera) use the tanh approximation.
            _require(act in ("relu", "silu"), f"decoder stage {i}: ResBlock act must be relu or silu, got {act}")
        else:
            _require(norm == "trms2d" and act == "silu",
                     f"decoder stage {i}: {block} needs norm trms2d and act silu, got {norm}/{act}")


def diffusers_config(cfg: DCAEConfig) -> dict[str, Any]:
    """Keyword arguments of ``diffusers.AutoencoderDC`` for this config (everything explicit:
    diffusers' own defaults are SANA's, not DC-AE's)."""
    _check_representable(cfg)
    enc, dec = cfg.encoder, cfg.decoder
    enc_blocks, enc_scales = _block_args(enc.block_types)
    dec_blocks, dec_scales = _block_args(dec.block_types)
    return {
        "in_channels": cfg.in_channels,
        "latent_channels": cfg.latent_channels,
        "attention_head_dim": 32,
        "encoder_block_types": enc_blocks,
        "decoder_block_types": dec_blocks,
        "encoder_block_out_channels": enc.width_list,
        "decoder_block_out_channels": dec.width_list,
        "encoder_layers_per_block": enc.depth_list,
        "decoder_layers_per_block": dec.depth_list,
        "encoder_qkv_multiscales": enc_scales,
        "decoder_qkv_multiscales": dec_scales,
        "upsample_block_type": _UPSAMPLE[dec.upsample_block_type],
        "downsample_block_type": _DOWNSAMPLE[enc.downsample_block_type],
        "decoder_norm_types": tuple(_NORMS[n] for n in dec.norms),
        "decoder_act_fns": dec.acts,
        "encoder_out_shortcut": enc.out_shortcut is not None,
        "decoder_in_shortcut": dec.in_shortcut is not None,
        "decoder_conv_act_fn": dec.out_act,
        "scaling_factor": 1.0 if cfg.scaling_factor is None else cfg.scaling_factor,
    }


def config_from_diffusers(dconf: Any) -> DCAEConfig:
    """The DC-AE config of a ``diffusers.AutoencoderDC`` config (``tessera.model.config``)."""
    get = dconf.get if hasattr(dconf, "get") else lambda key, default=None: getattr(dconf, key, default)
    _require(get("attention_head_dim", 32) == 32, "attention_head_dim must be 32")
    stages = {side: len(get(f"{side}_block_out_channels")) for side in ("encoder", "decoder")}

    def per_stage(key: str, side: str) -> tuple:
        value = get(key)
        return (value,) * stages[side] if isinstance(value, str) else tuple(value)

    def block_types(side: str) -> tuple[str, ...]:
        names = per_stage(f"{side}_block_types", side)
        scales = [tuple(s) for s in get(f"{side}_qkv_multiscales")]
        out = []
        for name, scale in zip(names, scales):
            if name == "ResBlock":
                out.append("ResBlock")
            else:
                known = {v: k for k, v in _EVIT_SCALES.items()}
                _require(name == "EfficientViTBlock" and scale in known,
                         f"{side} block {name!r} with qkv_multiscales {scale} has no Tessera equivalent")
                out.append(known[scale])
        return tuple(out)

    norms = {v: k for k, v in _NORMS.items()}
    dec_norms = per_stage("decoder_norm_types", "decoder")
    _require(all(n in norms for n in dec_norms), f"decoder_norm_types {dec_norms} must be rms_norm/batch_norm")
    upsample = {v: k for k, v in _UPSAMPLE.items()}.get(get("upsample_block_type"))
    _require(upsample is not None, f"upsample_block_type {get('upsample_block_type')!r} is unknown")
    downsample = "ConvPixelUnshuffle" if get("downsample_block_type") == "pixel_unshuffle" else "Conv"
    scaling = get("scaling_factor", 1.0)
    shared = {"in_channels": get("in_channels"), "latent_channels": get("latent_channels")}
    encoder = EncoderConfig(
        **shared,
        width_list=tuple(get("encoder_block_out_channels")),
        depth_list=tuple(get("encoder_layers_per_block")),
        block_type=block_types("encoder"),
        downsample_block_type=downsample,
        out_shortcut="averaging" if get("encoder_out_shortcut") else None,
    )
    decoder = DecoderConfig(
        **shared,
        in_shortcut="duplicating" if get("decoder_in_shortcut") else None,
        width_list=tuple(get("decoder_block_out_channels")),
        depth_list=tuple(get("decoder_layers_per_block")),
        block_type=block_types("decoder"),
        norm=tuple(norms[n] for n in dec_norms),
        act=per_stage("decoder_act_fns", "decoder"),
        upsample_block_type=upsample,
        out_act=get("decoder_conv_act_fn"),
    )
    return DCAEConfig(**shared, encoder=encoder, decoder=decoder,
                      scaling_factor=None if scaling in (None, 1.0) else float(scaling))


def _linear_from_conv(weight: torch.Tensor) -> torch.Tensor:
    return weight.reshape(weight.shape[0], weight.shape[1])  # (out, in, 1, 1) -> (out, in)


def state_dict_to_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename Tessera DC-AE weights to ``AutoencoderDC`` names (qkv conv -> to_q/to_k/to_v linears)."""
    out = {}
    for name, tensor in state.items():
        if name.endswith(".attn.qkv.weight"):
            prefix = name[: -len("qkv.weight")]
            for part, chunk in zip(("to_q", "to_k", "to_v"), tensor.chunk(3, dim=0)):
                out[f"{prefix}{part}.weight"] = _linear_from_conv(chunk)
            continue
        if name.endswith(".attn.proj.weight"):
            out[name[: -len("proj.weight")] + "to_out.weight"] = _linear_from_conv(tensor)
            continue
        out[_rename(name, reverse=False)] = tensor
    return out


def state_dict_from_diffusers(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse of :func:`state_dict_to_diffusers`."""
    out = {}
    for name, tensor in state.items():
        if name.endswith((".attn.to_k.weight", ".attn.to_v.weight")):
            continue
        if name.endswith(".attn.to_q.weight"):
            prefix = name[: -len("to_q.weight")]
            parts = [state[f"{prefix}{p}.weight"] for p in ("to_q", "to_k", "to_v")]
            out[f"{prefix}qkv.weight"] = torch.cat(parts, dim=0)[:, :, None, None]
            continue
        if name.endswith(".attn.to_out.weight"):
            out[name[: -len("to_out.weight")] + "proj.weight"] = tensor[:, :, None, None]
            continue
        out[_rename(name, reverse=True)] = tensor
    return out


def to_diffusers(module: DCAE) -> AutoencoderDC:
    """A ``diffusers.AutoencoderDC`` with the same weights (and BatchNorm statistics) as ``module``.

    Its ``scaling_factor`` is the one the training package measured over the training corpus
    (``tessera latent-stats``; ``load_checkpoint`` puts it on ``module.latent_stats``), else the
    config's, else 1.

    Raises:
        ValueError: the module is not a DC-AE, or uses a setting diffusers cannot express.
        ImportError: diffusers is not installed.
    """
    if not isinstance(module, DCAE):
        raise ValueError(f"only DC-AE networks convert to diffusers, got {type(module).__name__}")
    from diffusers import AutoencoderDC

    config = diffusers_config(module.config)
    stats = getattr(module, "latent_stats", None)
    if stats and stats.get("scaling_factor"):
        config["scaling_factor"] = float(stats["scaling_factor"])
    with torch.device("meta"):
        target = AutoencoderDC(**config)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}  # no storage shared with module
    target.load_state_dict(state_dict_to_diffusers(state), strict=True, assign=True)
    return target.train(module.training)


def from_diffusers(autoencoder: AutoencoderDC) -> DCAE:
    """A Tessera DC-AE with the same weights as a ``diffusers.AutoencoderDC``.

    Raises:
        ValueError: the diffusers model uses a setting Tessera does not have.
    """
    config = config_from_diffusers(autoencoder.config)
    with torch.device("meta"):
        module = DCAE(config)
    state = {k: v.detach().clone() for k, v in autoencoder.state_dict().items()}
    module.load_state_dict(state_dict_from_diffusers(state), strict=True, assign=True)
    return module.train(autoencoder.training)
