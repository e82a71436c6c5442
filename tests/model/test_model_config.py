"""The dot-list parser accepts the original experiment's strings and rejects bad names loudly."""

from __future__ import annotations

import pytest

from tessera import model
from tessera.model.config import ConfigError, DCAEConfig, config_from_dict, config_to_dict
from tessera.model.presets import parse_spec

# Verbatim from the original experiment's write-up, as its Python string literals concatenate them.
SEED_STRINGS = {
    "dcae-03": (
        "latent_channels=32 "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "encoder.width_list=[64,128,256,256,512,512] encoder.depth_list=[0,4,8,2,2,2] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "decoder.width_list=[64,128,256,256,512,512] decoder.depth_list=[0,5,10,2,2,2] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
    "dcae-04": (
        "latent_channels=64 "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "encoder.width_list=[64,128,256,256,512,512] encoder.depth_list=[0,4,8,2,2,2] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "decoder.width_list=[64,128,256,256,512,512] decoder.depth_list=[0,5,10,2,2,2] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
    "dcae-05": (
        "latent_channels=64 "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "encoder.width_list=[128,256,256,512,512,512] encoder.depth_list=[0,4,8,2,2,2] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "decoder.width_list=[128,256,256,512,512,512] decoder.depth_list=[0,5,10,2,2,2] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
    "dcae-06": (
        "latent_channels=64 "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "encoder.width_list=[64,128,256,256,512,1024] encoder.depth_list=[0,4,8,2,2,2] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "decoder.width_list=[64,128,256,256,512,1024] decoder.depth_list=[0,5,10,2,2,2] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
    "dcae-07": (
        "latent_channels=64 "
        "encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "encoder.width_list=[64,128,256,256,512,512] encoder.depth_list=[0,4,8,2,3,4] "
        "decoder.block_type=[ResBlock,ResBlock,ResBlock,EViT_GLU,EViT_GLU,EViT_GLU] "
        "decoder.width_list=[64,128,256,256,512,512] decoder.depth_list=[0,5,10,2,3,4] "
        "decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,trms2d] decoder.act=[relu,relu,relu,silu,silu,silu]"
    ),
}


@pytest.mark.parametrize("name", sorted(SEED_STRINGS))
def test_seed_strings_parse_to_their_presets(name):
    arch, config = parse_spec(SEED_STRINGS[name])
    assert arch == "dcae"
    assert config == parse_spec(name)[1]
    assert config.encoder.block_types[3] == "EViT_GLU"
    assert config.decoder.norms == ("bn2d",) * 3 + ("trms2d",) * 3


def test_seed_string_with_line_breaks_and_spaces_in_lists():
    text = SEED_STRINGS["dcae-04"].replace(" ", "\n  ").replace(",", ", ")
    assert DCAEConfig.from_dotlist(text) == parse_spec("dcae-04")[1]


def test_defaults_are_upstream():
    config = DCAEConfig()
    assert config.latent_channels == 32 and config.in_channels == 3 and config.scaling_factor is None
    enc, dec = config.encoder, config.decoder
    assert enc.width_list == (128, 256, 512, 512, 1024, 1024) and enc.depth_list == (2,) * 6
    assert (enc.norm, enc.act, enc.block_type) == ("trms2d", "silu", "ResBlock")
    assert (enc.downsample_block_type, enc.downsample_shortcut, enc.out_shortcut) == (
        "ConvPixelUnshuffle", "averaging", "averaging")
    assert (enc.out_norm, enc.out_act, enc.double_latent) == (None, None, False)
    assert (dec.in_shortcut, dec.upsample_block_type, dec.upsample_shortcut) == (
        "duplicating", "ConvPixelShuffle", "duplicating")
    assert (dec.out_norm, dec.out_act) == ("trms2d", "relu")


@pytest.mark.parametrize("name", sorted(model.PRESETS))
def test_every_preset_round_trips_through_dotlist_and_dict(name):
    arch, config = parse_spec(name)
    assert parse_spec(config.to_dotlist())[1] == config
    assert config_from_dict(arch, config_to_dict(config)) == config


@pytest.mark.parametrize(
    ("text", "bad", "known"),
    [
        ("encoder.norm=layernorm", "'layernorm'", "'bn2d', 'trms2d'"),
        ("decoder.norm=[bn2d,bn2d,bn2d,trms2d,trms2d,rms]", "'rms'", "'bn2d', 'trms2d'"),
        ("decoder.act=[relu,relu,relu,silu,silu,swish]", "'swish'", "'gelu', 'relu', 'silu'"),
        ("encoder.act=hswish", "'hswish'", "'gelu', 'relu', 'silu'"),
        ("encoder.block_type=[ResBlock,ResBlock,ResBlock,EViT,EViT_GLU,EViT_GLU]", "'EViT'", "'EViTS5_GLU'"),
        ("decoder.upsample_block_type=Nearest", "'Nearest'", "'ConvPixelShuffle'"),
        ("encoder.downsample_shortcut=sum", "'sum'", "'averaging'"),
        ("latent_chanels=64", "'latent_chanels'", "'latent_channels'"),
        ("encoder.widths=[1,2]", "'encoder.widths'", "'encoder.width_list'"),
        ("quantizer.depth=2", "'quantizer'", "'decoder', 'encoder'"),
    ],
)
def test_bad_names_are_rejected_with_the_known_ones(text, bad, known):
    with pytest.raises(ConfigError) as info:
        parse_spec(text)
    assert bad in str(info.value) and known in str(info.value)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("latent_channels=sixty", "expected an integer"),
        ("encoder.depth_list=[0,4,8]", "depth_list has 3 entries"),
        ("decoder.norm=[bn2d,trms2d]", "2 entries but there are 6 stages"),
        ("encoder.depth_list=[2,2,0,2,2,2]", "only the first and the last stage may be empty"),
        ("latent_channels=48", "do not split into groups"),
        ("encoder.block_type=EViT_GLU encoder.width_list=[48,96,192,192,384,384]", "multiple of 32"),
        ("encoder.latent_channels=64", "set latent_channels at the top level"),
        ("latent_channels=32 latent_channels=64", "given twice"),
        ("encoder.double_latent=true", "not supported"),
        ("in_channels=5", "RGBA"),
        ("dcae-99", "unknown preset 'dcae-99'"),
        ("arch=vqgan", "unknown arch 'vqgan'"),
        ("arch=baseline latent_dim=0", "positive integer"),
        ("arch=baseline width=3", "unknown key 'width'"),
        ("latent_channels=64 encoder", "cannot parse"),
    ],
)
def test_invalid_values_are_rejected(text, needle):
    with pytest.raises(ConfigError, match=None) as info:
        parse_spec(text)
    assert needle in str(info.value)


def test_config_errors_are_value_errors():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        model.build("encoder.norm=ln2d")


def test_dataclasses_are_frozen_and_normalise_lists():
    config = DCAEConfig.from_dotlist("latent_channels=64")
    with pytest.raises(AttributeError):
        config.latent_channels = 32  # type: ignore[misc]
    assert isinstance(model.EncoderConfig(width_list=[8, 32], depth_list=[1, 1]).width_list, tuple)


def test_baseline_dotlist_overrides():
    arch, config = parse_spec("arch=baseline latent_dim=64")
    assert arch == "baseline" and config.latent_shape == (64,)
    assert parse_spec(config.to_dotlist())[1] == config
