"""A DC-AE converted to ``diffusers.AutoencoderDC`` and back computes the same function."""

from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderDC  # the [diffusers] extra is installed by `make test`

from tessera import model
from tessera.model.blocks import LiteMLA
from tessera.model.interop import from_diffusers, to_diffusers



def randomize(net: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random weights everywhere, including norm affines and BatchNorm running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.num_features, generator=gen) * 0.5)
                module.running_var.copy_(torch.rand(module.num_features, generator=gen) * 1.5 + 0.5)
                module.num_batches_tracked.fill_(7)
            for name, param in module.named_parameters(recurse=False):
                if name in ("weight", "bias") and param.ndim == 1:  # norm affine parameters
                    base = 1.0 if name == "weight" else 0.0
                    param.copy_(base + 0.3 * torch.randn(param.shape, generator=gen))
    return net.eval()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture
def branches(monkeypatch):
    """Records which LiteMLA branch each call takes."""
    calls = []
    for name in ("linear_attention", "quadratic_attention"):
        original = getattr(LiteMLA, name)
        monkeypatch.setattr(LiteMLA, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a))
    return calls


# dcae-s48 is the seed's dcae-04 layout at CPU scale: Res/Res/Res/EViT/EViT/EViT with bn2d/relu and
# trms2d/silu decoder stages. dcae-t48 adds EViTS5_GLU. 32x32 tiles take only the quadratic branch;
# 64x64 inputs put 8x8 feature maps (64 pixels > 32) through the linear one.
@pytest.mark.parametrize(("name", "side", "branch"), [
    ("dcae-s48", 32, "quadratic_attention"),
    ("dcae-s48", 64, "linear_attention"),
    ("dcae-t48", 32, "quadratic_attention"),
    ("dcae-t48", 96, "linear_attention"),
])
def test_parity_both_directions(name, side, branch, branches):
    torch.manual_seed(0)
    ours = randomize(model.build(name), seed=1)
    theirs = to_diffusers(ours).eval()
    assert isinstance(theirs, AutoencoderDC)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_params
    back = from_diffusers(theirs).eval()
    assert back.config == ours.config

    x = torch.rand(3, 3, side, side, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        z = ours.encode(x)
        assert branch in branches  # the encoder took the branch under test ...
        branches.clear()
        y = ours.decode(z)
        assert branch in branches  # ... and so did the decoder
        z_back = back.encode(x)
        z_theirs = theirs.encode(x).latent
        y_theirs = theirs.decode(z).sample
        y_back = back.decode(z_theirs)
    assert z.shape[-1] == side // 32
    for a, b in ((z_theirs, z), (y_theirs, y), (z_back, z_theirs), (y_back, theirs.decode(z_theirs).sample)):
        assert rel_err(a, b) <= 1e-4


def test_weights_are_copied_not_shared():
    ours = model.build("dcae-t48")
    theirs = to_diffusers(ours)
    with torch.no_grad():
        theirs.encoder.conv_out.weight.zero_()
    assert ours.encoder.conv_out.weight.abs().sum() > 0


def test_diffusers_model_built_there_converts():
    theirs = AutoencoderDC(
        latent_channels=64, attention_head_dim=32,
        encoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        decoder_block_types=("ResBlock", "ResBlock", "EfficientViTBlock"),
        encoder_block_out_channels=(16, 32, 64), decoder_block_out_channels=(16, 32, 64),
        encoder_layers_per_block=(1, 1, 1), decoder_layers_per_block=(1, 1, 1),
        encoder_qkv_multiscales=((), (), (5,)), decoder_qkv_multiscales=((), (), (5,)),
        decoder_norm_types=("batch_norm", "batch_norm", "rms_norm"), decoder_act_fns=("relu", "relu", "silu"),
    )
    theirs = randomize(theirs, seed=3)
    ours = from_diffusers(theirs).eval()
    assert ours.config.encoder.block_types == ("ResBlock", "ResBlock", "EViTS5_GLU")
    assert ours.latent_shape == (64, 8, 8)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert rel_err(ours.encode(x), theirs.encode(x).latent) <= 1e-4
        z = torch.randn(2, 64, 8, 8)
        assert rel_err(ours.decode(z), theirs.decode(z).sample) <= 1e-4


@pytest.mark.parametrize(("text", "needle"), [
    ("latent_channels=64 encoder.norm=bn2d", "encoder norm/act"),
    ("latent_channels=64 decoder.block_type=EViT_GLU decoder.norm=bn2d", "needs norm trms2d and act silu"),
    ("latent_channels=64 decoder.act=gelu", "ResBlock act must be relu or silu"),
    ("latent_channels=64 encoder.out_norm=trms2d", "out_norm/out_act"),
])
def test_unrepresentable_configs_are_refused(text, needle):
    with pytest.raises(ValueError, match=needle):
        to_diffusers(model.build(text, device="meta"))


def test_baseline_is_refused():
    with pytest.raises(ValueError, match="only DC-AE"):
        to_diffusers(model.build("baseline", device="meta"))


@pytest.mark.parametrize("name", sorted(n for n in model.PRESETS if n != "baseline"))
def test_every_dcae_preset_converts(name):
    ours = model.build(name, device="meta")  # structure and names only
    theirs = to_diffusers(ours)
    assert sum(p.numel() for p in theirs.parameters()) == ours.num_params
    assert from_diffusers(theirs).config == ours.config
