"""Every preset has the original experiment's exact parameter counts, latent shapes and compression ratios."""

from __future__ import annotations

import pytest
import torch

from tessera import model

# the original experiment's counts: (total, encoder, decoder, latent channels, ratio)
SEED_COUNTS = {
    "dcae-03": (81_241_004, 30_989_088, 50_251_916, 32, 96),
    "dcae-04": (81_535_948, 31_136_576, 50_399_372, 64, 48),
    "dcae-05": (110_969_356, 41_532_672, 69_436_684, 64, 48),
    "dcae-06": (142_673_484, 57_281_472, 85_392_012, 64, 48),
    "dcae-07": (106_984_396, 43_860_800, 63_123_596, 64, 48),
    "f32c32": (323_356_460, 123_172_384, 200_184_076, 32, 96),
}


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", sorted(SEED_COUNTS))
def test_seed_preset_parameter_counts(name):
    total, encoder, decoder, latent, ratio = SEED_COUNTS[name]
    net = model.build(name, device="meta")  # shapes only: no memory, no initialisation
    assert (count(net), count(net.encoder), count(net.decoder)) == (total, encoder, decoder)
    assert net.num_params == total
    assert net.latent_shape == (latent, 1, 1)
    assert net.compression_ratio == ratio
    assert net.arch == "dcae" and net.spec == name


def test_baseline_matches_the_seed():
    net = model.build("baseline")
    assert count(net) == 5_053_491
    assert net.arch == "baseline" and net.latent_shape == (128,) and net.compression_ratio == 24
    x = torch.rand(2, 3, 32, 32)
    z = net.encode(x)
    assert z.shape == (2, 128)
    assert net.decode(z).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("name", ["dcae-s48", "dcae-t48"])
def test_small_presets_run_at_ratio_48(name):
    net = model.build(name).eval()
    assert net.latent_shape == (64, 1, 1) and net.compression_ratio == 48
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        z = net.encode(x)
        assert z.shape == (3, 64, 1, 1)
        y = net.decode(z)
    assert y.shape == (3, 3, 32, 32) and torch.isfinite(y).all()
    assert torch.equal(net(x), y)


def test_tiny_preset_has_every_block_kind():
    net = model.build("dcae-t48")
    kinds = {type(m).__name__ for m in net.modules()}
    assert {"ResBlock", "EfficientViTBlock", "LiteMLA", "GLUMBConv", "MultiScaleProjection", "BatchNorm2d",
            "TritonRMSNorm2d", "DownsampleLayer", "UpsampleLayer"} <= kinds
    assert count(net) < 500_000


def test_spec_rebuilds_the_same_network():
    text = "latent_channels=32 encoder.width_list=[8,32] encoder.depth_list=[1,1] " \
           "decoder.width_list=[8,32] decoder.depth_list=[1,1]"
    net = model.build(text)
    assert net.latent_shape == (32, 16, 16) and net.compression_ratio == 0.375
    again = model.build(net.spec)
    assert again.config == net.config and again.spec == net.spec
    assert model.build(" dcae-t48 ").spec == "dcae-t48"


def test_fewer_stages_give_larger_latents():
    net = model.build("latent_channels=16 encoder.width_list=[32,64,64] encoder.depth_list=[0,1,1] "
                      "decoder.width_list=[32,64,64] decoder.depth_list=[0,1,1]")
    assert net.latent_shape == (16, 8, 8)
    assert net.encode(torch.rand(1, 3, 32, 32)).shape == (1, 16, 8, 8)


def test_decoder_output_is_not_clamped():
    net = model.build("dcae-t48").eval()
    with torch.no_grad():
        y = net.decode(torch.randn(16, 64, 1, 1) * 50)
    assert y.min() < 0 or y.max() > 1
