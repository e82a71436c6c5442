"""Configuration of the networks: frozen dataclasses, checked on construction, and their JSON form.

The DC-AE dataclasses mirror efficientvit's ``dc_ae.py`` (same field names, same defaults), so the
seed's override strings such as ``"latent_channels=64 encoder.width_list=[64,128,256,256,512,512]"``
apply unchanged. Unlike upstream, every name is checked: an unknown key, block type, norm or
activation is an error that names the bad value and the known ones. The dot-list parser is
``tessera.model.dotlist``; the named presets and ``parse_spec`` are ``tessera.model.presets``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .dotlist import ConfigError, changed_fields, coerce_all, field_default, format_entry, split_entries  # noqa: F401 (ConfigError re-exported)

BLOCK_TYPES = ("ResBlock", "EViT_GLU", "EViTS5_GLU")
NORMS = ("bn2d", "trms2d")
ACTS = ("relu", "silu", "gelu")
DOWNSAMPLE_BLOCK_TYPES = ("ConvPixelUnshuffle", "Conv")
UPSAMPLE_BLOCK_TYPES = ("ConvPixelShuffle", "InterpolateConv")
DOWN_SHORTCUTS = ("averaging",)
UP_SHORTCUTS = ("duplicating",)
ARCHS = ("dcae", "baseline")

TILE_SIZE = 32  # every Tessera input is a 32x32 tile
CHANNELS = (3, 4)  # RGB (alpha multiplied in), or RGBA (alpha kept, for alpha-aware models)
HEAD_DIM = 32  # LiteMLA head dimension in the DC-AE blocks (heads = width // 32)


def _check_name(what: str, value: Any, known: tuple[str, ...], optional: bool = False) -> None:
    if optional and value is None:
        return
    if not isinstance(value, str) or value not in known:
        extra = " or None" if optional else ""
        raise ConfigError(f"unknown {what} {value!r}; known: {sorted(known)}{extra}")


def _per_stage(what: str, value: Any, num_stages: int, known: tuple[str, ...]) -> tuple[str, ...]:
    """A name given once for all stages, or one per stage, as a tuple of one name per stage."""
    names = (value,) * num_stages if isinstance(value, str) else tuple(value)
    if len(names) != num_stages:
        raise ConfigError(f"{what} has {len(names)} entries but there are {num_stages} stages (width_list)")
    for name in names:
        _check_name(what, name, known)
    return names


def _check_stages(width_list: tuple[int, ...], depth_list: tuple[int, ...]) -> None:
    if not width_list:
        raise ConfigError("width_list must name at least one stage")
    if len(depth_list) != len(width_list):
        raise ConfigError(f"depth_list has {len(depth_list)} entries but width_list has {len(width_list)}")
    if len(width_list) > 6:
        raise ConfigError(f"{len(width_list)} stages would down-sample a {TILE_SIZE}x{TILE_SIZE} tile below 1x1; "
                          "use at most 6")
    for width in width_list:
        if not isinstance(width, int) or isinstance(width, bool) or width < 1:
            raise ConfigError(f"width_list entries must be positive integers, got {width!r}")
    for i, depth in enumerate(depth_list):
        if not isinstance(depth, int) or isinstance(depth, bool) or depth < 0:
            raise ConfigError(f"depth_list entries must be integers >= 0, got {depth!r}")
        # A middle stage without blocks would also skip its resampling layer and break the channel chain.
        if depth == 0 and 0 < i < len(depth_list) - 1:
            raise ConfigError(f"depth_list[{i}] is 0: only the first and the last stage may be empty")
    if len(width_list) == 1 and depth_list[0] == 0:
        raise ConfigError("a single-stage network needs depth_list[0] > 0")


def _check_blocks(side: str, width_list: tuple[int, ...], depth_list: tuple[int, ...],
                  block_types: tuple[str, ...]) -> None:
    for i, (width, depth, block_type) in enumerate(zip(width_list, depth_list, block_types)):
        if depth > 0 and block_type != "ResBlock" and width % HEAD_DIM != 0:
            raise ConfigError(f"{side}.width_list[{i}]={width}: {block_type} needs a multiple of {HEAD_DIM} "
                              f"channels (attention heads of dimension {HEAD_DIM})")


def _check_group(what: str, numerator: int, denominator: int) -> None:
    if numerator % denominator != 0:
        raise ConfigError(f"{what}: {numerator} channels do not split into groups for {denominator} channels")


@dataclass(frozen=True)
class EncoderConfig:
    """Encoder of a DC-AE (efficientvit ``EncoderConfig``)."""

    in_channels: int = 3  # set from DCAEConfig.in_channels
    latent_channels: int = 32  # set from DCAEConfig.latent_channels
    width_list: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    depth_list: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    block_type: str | tuple[str, ...] = "ResBlock"  # one name, or one per stage
    norm: str = "trms2d"
    act: str = "silu"
    downsample_block_type: str = "ConvPixelUnshuffle"
    downsample_match_channel: bool = True
    downsample_shortcut: str | None = "averaging"
    out_norm: str | None = None
    out_act: str | None = None
    out_shortcut: str | None = "averaging"
    double_latent: bool = False  # upstream's VAE variant; a Tessera latent feeds the decoder directly

    def __post_init__(self) -> None:
        for name in ("width_list", "depth_list"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if not isinstance(self.block_type, str):
            object.__setattr__(self, "block_type", tuple(self.block_type))
        _check_stages(self.width_list, self.depth_list)
        block_types = _per_stage("encoder block_type", self.block_type, len(self.width_list), BLOCK_TYPES)
        _check_blocks("encoder", self.width_list, self.depth_list, block_types)
        _check_name("encoder norm", self.norm, NORMS)
        _check_name("encoder act", self.act, ACTS)
        _check_name("encoder downsample_block_type", self.downsample_block_type, DOWNSAMPLE_BLOCK_TYPES)
        _check_name("encoder downsample_shortcut", self.downsample_shortcut, DOWN_SHORTCUTS, optional=True)
        _check_name("encoder out_norm", self.out_norm, NORMS, optional=True)
        _check_name("encoder out_act", self.out_act, ACTS, optional=True)
        _check_name("encoder out_shortcut", self.out_shortcut, DOWN_SHORTCUTS, optional=True)
        if self.downsample_match_channel is not True:
            raise ConfigError("encoder.downsample_match_channel=False is not supported (blocks keep their width)")
        if self.double_latent is not False:
            raise ConfigError("encoder.double_latent=True is not supported: the latent feeds the decoder directly")
        widths, depths = self.width_list, self.depth_list
        for i in range(len(widths) - 1):
            if depths[i] > 0:
                self._check_downsample(f"encoder stage {i} down-sample", widths[i], widths[i + 1], True)
        if depths[0] == 0:
            self._check_downsample("encoder conv_in", self.in_channels, widths[1], False)
        if self.out_shortcut is not None:
            _check_group("encoder out_shortcut (averaging)", widths[-1], self.latent_channels)

    def _check_downsample(self, what: str, cin: int, cout: int, shortcut: bool) -> None:
        if self.downsample_block_type == "ConvPixelUnshuffle":
            _check_group(f"{what} (pixel unshuffle)", cout, 4)
        if shortcut and self.downsample_shortcut is not None:
            _check_group(f"{what} shortcut (averaging)", 4 * cin, cout)

    @property
    def block_types(self) -> tuple[str, ...]:
        return _per_stage("encoder block_type", self.block_type, len(self.width_list), BLOCK_TYPES)


@dataclass(frozen=True)
class DecoderConfig:
    """Decoder of a DC-AE (efficientvit ``DecoderConfig``)."""

    in_channels: int = 3  # set from DCAEConfig.in_channels
    latent_channels: int = 32  # set from DCAEConfig.latent_channels
    in_shortcut: str | None = "duplicating"
    width_list: tuple[int, ...] = (128, 256, 512, 512, 1024, 1024)
    depth_list: tuple[int, ...] = (2, 2, 2, 2, 2, 2)
    block_type: str | tuple[str, ...] = "ResBlock"  # one name, or one per stage
    norm: str | tuple[str, ...] = "trms2d"
    act: str | tuple[str, ...] = "silu"
    upsample_block_type: str = "ConvPixelShuffle"
    upsample_match_channel: bool = True
    upsample_shortcut: str | None = "duplicating"
    out_norm: str | None = "trms2d"
    out_act: str | None = "relu"

    def __post_init__(self) -> None:
        for name in ("width_list", "depth_list"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("block_type", "norm", "act"):
            if not isinstance(getattr(self, name), str):
                object.__setattr__(self, name, tuple(getattr(self, name)))
        _check_stages(self.width_list, self.depth_list)
        _check_blocks("decoder", self.width_list, self.depth_list, self.block_types)
        _ = self.norms, self.acts
        _check_name("decoder in_shortcut", self.in_shortcut, UP_SHORTCUTS, optional=True)
        _check_name("decoder upsample_block_type", self.upsample_block_type, UPSAMPLE_BLOCK_TYPES)
        _check_name("decoder upsample_shortcut", self.upsample_shortcut, UP_SHORTCUTS, optional=True)
        _check_name("decoder out_norm", self.out_norm, NORMS, optional=True)
        _check_name("decoder out_act", self.out_act, ACTS, optional=True)
        if self.upsample_match_channel is not True:
            raise ConfigError("decoder.upsample_match_channel=False is not supported (blocks keep their width)")
        widths, depths = self.width_list, self.depth_list
        if self.in_shortcut is not None:
            _check_group("decoder in_shortcut (duplicating)", widths[-1], self.latent_channels)
        for i in range(len(widths) - 1):
            if depths[i] > 0 and self.upsample_shortcut is not None:
                _check_group(f"decoder stage {i} up-sample shortcut (duplicating)", 4 * widths[i], widths[i + 1])

    @property
    def block_types(self) -> tuple[str, ...]:
        return _per_stage("decoder block_type", self.block_type, len(self.width_list), BLOCK_TYPES)

    @property
    def norms(self) -> tuple[str, ...]:
        return _per_stage("decoder norm", self.norm, len(self.width_list), NORMS)

    @property
    def acts(self) -> tuple[str, ...]:
        return _per_stage("decoder act", self.act, len(self.width_list), ACTS)


@dataclass(frozen=True)
class DCAEConfig:
    """A whole DC-AE. ``in_channels`` and ``latent_channels`` feed both encoder and decoder."""

    in_channels: int = 3
    latent_channels: int = 32
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    scaling_factor: float | None = None  # recorded for diffusion use; never applied inside the model

    def __post_init__(self) -> None:
        for name in ("in_channels", "latent_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            for side in ("encoder", "decoder"):
                if getattr(getattr(self, side), name) != value:
                    raise ConfigError(f"{side}.{name}={getattr(getattr(self, side), name)} differs from {name}="
                                      f"{value}; set {name} at the top level only")
        if self.in_channels not in CHANNELS:
            raise ConfigError(f"in_channels must be 3 (RGB tiles) or 4 (RGBA tiles), got {self.in_channels}")

    @classmethod
    def from_dotlist(cls, text: str) -> DCAEConfig:
        """Parse a dot-list such as ``"latent_channels=64 encoder.depth_list=[0,4,8,2,2,2]"``."""
        top, sub = split_entries(text, cls, sections=("encoder", "decoder"))
        top_values = coerce_all(cls, top, prefix="")
        shared = {k: top_values.get(k, field_default(cls, k)) for k in ("in_channels", "latent_channels")}
        parts = {}
        for side, sub_cls in (("encoder", EncoderConfig), ("decoder", DecoderConfig)):
            entries = sub.get(side, {})
            for key in shared:
                if key in entries:
                    raise ConfigError(f"{side}.{key} cannot be set on its own; set {key} at the top level")
            parts[side] = sub_cls(**coerce_all(sub_cls, entries, prefix=f"{side}."), **shared)
        return cls(**top_values, **parts)

    def to_dotlist(self) -> str:
        """The shortest dot-list that rebuilds this config (only values that differ from the defaults)."""
        items = [f"latent_channels={self.latent_channels}"]
        items += [format_entry(f.name, getattr(self, f.name)) for f in changed_fields(self, DCAEConfig())
                  if f.name != "latent_channels"]
        for side in ("encoder", "decoder"):
            default = getattr(DCAEConfig(), side)
            for f in changed_fields(getattr(self, side), default):
                if f.name not in ("in_channels", "latent_channels"):
                    items.append(format_entry(f"{side}.{f.name}", getattr(getattr(self, side), f.name)))
        return " ".join(items)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """Latent shape of one 32x32 tile, ``(C, H, W)``."""
        num_down = len(self.encoder.width_list) - 1
        side = TILE_SIZE >> num_down
        return (self.latent_channels, side, side)


@dataclass(frozen=True)
class BaselineConfig:
    """The original experiment's stacked symmetric CNN autoencoder: valid convolutions, then one linear layer."""

    in_channels: int = 3
    channels: tuple[int, ...] = (24, 32, 48)
    kernel_size: int = 5
    latent_dim: int = 128

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in ("in_channels", "kernel_size", "latent_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"baseline {name} must be a positive integer, got {value!r}")
        if not self.channels or any(not isinstance(c, int) or c < 1 for c in self.channels):
            raise ConfigError(f"baseline channels must be positive integers, got {list(self.channels)}")
        if self.in_channels not in CHANNELS:
            raise ConfigError(f"in_channels must be 3 (RGB tiles) or 4 (RGBA tiles), got {self.in_channels}")
        if self.feature_size < 1:
            raise ConfigError(f"{len(self.channels)} convolutions of kernel {self.kernel_size} leave nothing of "
                              f"a {TILE_SIZE}x{TILE_SIZE} tile")

    @property
    def feature_size(self) -> int:
        """Side of the last feature map: each valid convolution takes ``kernel_size - 1`` pixels."""
        return TILE_SIZE - len(self.channels) * (self.kernel_size - 1)

    @classmethod
    def from_dotlist(cls, text: str) -> BaselineConfig:
        top, _ = split_entries(text, cls, sections=())
        return cls(**coerce_all(cls, top, prefix=""))

    def to_dotlist(self) -> str:
        items = [format_entry(f.name, getattr(self, f.name)) for f in changed_fields(self, BaselineConfig())]
        return " ".join(["arch=baseline", *items])

    @property
    def latent_shape(self) -> tuple[int]:
        return (self.latent_dim,)


ModelConfig = DCAEConfig | BaselineConfig


def config_to_dict(config: ModelConfig) -> dict[str, Any]:
    """Plain JSON-able dict (tuples as lists) of a config, nested for DC-AE."""
    return _jsonable(dataclasses.asdict(config))


def config_from_dict(arch: str, data: dict[str, Any]) -> ModelConfig:
    """Inverse of :func:`config_to_dict`; unknown keys are errors."""
    _check_name("arch", arch, ARCHS)
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
    if arch == "baseline":
        return BaselineConfig(**_known_keys(BaselineConfig, data, ""))
    values = _known_keys(DCAEConfig, data, "")
    for side, sub_cls in (("encoder", EncoderConfig), ("decoder", DecoderConfig)):
        if side in values:
            if not isinstance(values[side], dict):
                raise ConfigError(f"{side} must be a JSON object")
            values[side] = sub_cls(**_known_keys(sub_cls, values[side], f"{side}."))
    return DCAEConfig(**values)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    return value


def _known_keys(cls: type, data: dict[str, Any], prefix: str) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key {prefix}{unknown[0]!r}; known: {sorted(prefix + k for k in known)}")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
