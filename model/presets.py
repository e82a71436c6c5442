"""Named model specs: the original experiment's runs, upstream's default f32c32, the CPU-sized models Tessera
ships, and a tiny one for tests. ``parse_spec`` reads a name or a dot-list into a config."""

from __future__ import annotations

from .config import ARCHS, BaselineConfig, ConfigError, DCAEConfig, ModelConfig
from .dotlist import tokenize

# The original experiment's runs, upstream's default f32c32, and two CPU-sized models of our own.
_SEED_COMMON = (
    "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
    "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
    "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
)
_SEED_DEPTHS = "encoder.depth_list=[0,4,8,2,2,2] decoder.depth_list=[0,5,10,2,2,2]"


def _seed(latent: int, widths: str, depths: str = _SEED_DEPTHS) -> str:
    return (f"latent_channels={latent} encoder.width_list={widths} decoder.width_list={widths} "
            f"{depths} {_SEED_COMMON}")


def _small(latent: int, widths: list[int], encoder_depths: list[int], decoder_depths: list[int],
           decoder_widths: list[int] | None = None, upsample: str | None = None) -> str:
    """A CPU-sized DC-AE: ResBlocks in the first three stages, EViT_GLU after, bn2d/relu decoder
    stages where the ResBlocks are. The decoder has the encoder's widths unless ``decoder_widths``
    says otherwise, and pixel-shuffle up-sampling unless ``upsample`` names another."""
    stages = len(widths)
    blocks = ",".join(["ResBlock"] * 3 + ["EViT_GLU"] * (stages - 3))
    norms = ",".join(["bn2d"] * 3 + ["trms2d"] * (stages - 3))
    acts = ",".join(["relu"] * 3 + ["silu"] * (stages - 3))

    def listed(values: list[int]) -> str:
        return "[" + ",".join(map(str, values)) + "]"

    return (f"latent_channels={latent} "
            f"encoder.width_list={listed(widths)} encoder.depth_list={listed(encoder_depths)} "
            f"encoder.block_type=[{blocks}] "
            f"decoder.width_list={listed(decoder_widths or widths)} decoder.depth_list={listed(decoder_depths)} "
            f"decoder.block_type=[{blocks}] decoder.norm=[{norms}] decoder.act=[{acts}]"
            + (f" decoder.upsample_block_type={upsample}" if upsample else ""))


def _f8(latent: int) -> str:
    """The bundled models' layout: three down-sampling stages to a 4x4 latent of ``latent`` channels."""
    return _small(latent, [16, 32, 64, 128], [0, 1, 2, 2], [0, 1, 3, 2])


def f8_with_decoder(latent: int, decoder_widths: list[int], decoder_depths: list[int], upsample: str | None = None) -> str:
    """The f8 encoder with a decoder that has blocks at full resolution: the output is made from
    ``decoder_widths[0]`` channels at 32x32 by a 3x3 convolution, not pixel-shuffled from 16x16."""
    return _small(latent, [16, 32, 64, 128], [0, 1, 2, 2], decoder_depths, decoder_widths, upsample)


def _f4(latent: int) -> str:
    """Two down-sampling stages to an 8x8 latent, the last stage all ResBlocks at 128 channels."""
    return _small(latent, [16, 32, 128], [0, 1, 2], [0, 1, 4])


_RGBA = "in_channels=4 "  # 4 channels in and out
_S48 = _small(64, [16, 32, 64, 64, 128, 128], [0, 1, 2, 1, 1, 1], [0, 1, 3, 1, 1, 1])

PRESETS: dict[str, str] = {
    "baseline": "arch=baseline",
    "dcae-03": _seed(32, "[64,128,256,256,512,512]"),
    "dcae-04": _seed(64, "[64,128,256,256,512,512]"),
    "dcae-05": _seed(64, "[128,256,256,512,512,512]"),
    "dcae-06": _seed(64, "[64,128,256,256,512,1024]"),
    "dcae-07": _seed(64, "[64,128,256,256,512,512]",
                     "encoder.depth_list=[0,4,8,2,3,4] decoder.depth_list=[0,5,10,2,3,4]"),
    "f32c32": _seed(32, "[128,256,512,512,1024,1024]"),  # upstream dc-ae-f32c32-in-1.0
    # dcae-04's layout at CPU scale: ratio 48 (latent 64x1x1), the first bundled checkpoint; the
    # same network under a name that says its layout, as the ones below are named:
    # <ratio>-f<down-sampling>c<latent channels>
    "dcae-s48": _S48,
    "dcae-s48-f32c64": _S48,
    # Ratio-48 layouts at dcae-s48's scale, and a ratio-12 model for pipelines that need tiles
    # back nearly as they went in.
    "dcae-s48-f16c16": _small(16, [16, 32, 64, 64, 128], [0, 1, 2, 1, 2], [0, 1, 3, 1, 2]),
    "dcae-s48-f8c4": _f8(4),
    "dcae-s12-f8c16": _f8(16),
    # The same encoders with a decoder that works at full resolution: one ResBlock at 32x32 and
    # 32 channels, where the f8 decoder pixel-shuffles its output from 16x16 (docs/training.md)
    "dcae-s48-f8c4-d32": f8_with_decoder(4, [32, 32, 64, 128], [1, 1, 3, 2]),
    "dcae-s12-f8c16-d32": f8_with_decoder(16, [32, 32, 64, 128], [1, 1, 3, 2]),
    # The same latent with about four times the widths and more blocks at 32x32 and 16x16: what a
    # GPU can train in minutes (bench/gpu_train.py, make gpu-train)
    "dcae-s48-f8c4-l": _small(4, [32, 64, 128, 256], [1, 1, 2, 2], [1, 2, 3, 2], [64, 64, 128, 256]),
    # One down-sampling stage fewer (an 8x8 latent), at about the f8 models' size: the last stage
    # is all ResBlocks at 128 channels, twice the f8 models' compute per tile.
    "dcae-s48-f4c1": _f4(1),
    "dcae-s12-f4c4": _f4(4),
    # dcae-s48-f8c4 and -f4c1 with alpha: RGBA in and out, the same latents (ratio 64 of RGBA values)
    "dcae-s64-f8c4-rgba": _RGBA + _f8(4),
    "dcae-s64-f4c1-rgba": _RGBA + _f4(1),
    # dcae-s64-f8c4-rgba with a larger latent, for users who need outlines kept more than 64 numbers
    # per tile allow: 8x4x4 (ratio 32) and 16x4x4 (ratio 16, the RGB ratio-12 model's latent)
    "dcae-s32-f8c8-rgba": _RGBA + _f8(8),
    "dcae-s16-f8c16-rgba": _RGBA + _f8(16),
    # about the baseline's 5M parameters at ratio 48, for DC-AE against the baseline at matched size: the
    # small layouts with a wider last stage (the high-resolution stages, where the time goes, as they are)
    "dcae-m48-f16c16": _small(16, [16, 32, 64, 128, 256], [0, 1, 2, 1, 1], [0, 1, 3, 1, 1]),
    "dcae-m48-f8c4": _small(4, [16, 32, 64, 256], [0, 1, 2, 2], [0, 1, 3, 2]),
    # Tiny, for tests: every block kind (EViTS5_GLU included), bn2d and trms2d, ratio 48.
    "dcae-t48": (
        "latent_channels=64 "
        "encoder.width_list=[8,16,32,32,32,64] encoder.depth_list=[0,1,1,1,1,0] "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViTS5_GLU,EViT_GLU] "
        "decoder.width_list=[8,16,32,32,32,64] decoder.depth_list=[0,1,1,1,1,0] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViTS5_GLU,EViT_GLU] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
}


def parse_spec(spec: str) -> tuple[str, ModelConfig]:
    """A preset name or a dot-list, as ``(arch, config)``.

    ``arch=baseline`` in a dot-list selects the baseline CNN; without ``arch`` it is a DC-AE.
    """
    if not isinstance(spec, str):
        raise ConfigError(f"a model spec must be a string, got {type(spec).__name__}")
    text = PRESETS.get(spec.strip(), spec)
    if "=" not in text:
        raise ConfigError(f"unknown preset {spec!r}; known: {sorted(PRESETS)} (or a dot-list such as "
                          "'latent_channels=64 encoder.width_list=[...]')")
    entries = tokenize(text)
    archs = [value for key, value in entries if key == "arch"]
    if len(archs) > 1:
        raise ConfigError("'arch' is given twice")
    arch = archs[0] if archs else "dcae"
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; known: {sorted(ARCHS)}")
    text = " ".join(f"{key}={value}" for key, value in entries if key != "arch")
    if arch == "baseline":
        return arch, BaselineConfig.from_dotlist(text)
    return arch, DCAEConfig.from_dotlist(text)
