"""The blocks compute what upstream computes."""

from __future__ import annotations

import pytest
import torch

from tessera.model.blocks import (DownsampleLayer, EfficientViTBlock, LiteMLA, ResBlock, TritonRMSNorm2d, UpsampleLayer,
                          build_act, build_block, build_norm)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("c", [32, 64])
def test_block_parameter_formulas(c):
    assert count(ResBlock(c, "bn2d", "relu")) == 18 * c * c + 3 * c
    assert count(build_block("EViT_GLU", c, "trms2d", "silu")) == 16 * c * c + 92 * c
    heads = c // 32
    extra = 3 * c * 25 + 3 * c * 32  # depthwise 5x5 on 3C, then 1x1 grouped by 3*heads (32 channels a group)
    extra += c * c  # proj input is 2C
    assert count(build_block("EViTS5_GLU", c, "trms2d", "silu")) == 16 * c * c + 92 * c + extra
    assert heads >= 1


def test_trms2d_formula_and_fp32_compute():
    norm = TritonRMSNorm2d(8)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = torch.randn(2, 8, 3, 3) * 5
    expected = x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-5) * norm.weight[:, None, None] \
        + norm.bias[:, None, None]
    torch.testing.assert_close(norm(x), expected)
    half = norm(x.half())
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), norm(x.half().float()), atol=1e-2, rtol=1e-2)


def test_linear_and_quadratic_attention_agree():
    """Both branches compute the same ReLU attention; only the order of products differs."""
    attn = LiteMLA(64, norm="trms2d", scales=(5,))
    qkv = torch.randn(2, 4, 96, 36)
    q, k, v = qkv.chunk(3, dim=2)
    q, k = q.relu(), k.relu()
    torch.testing.assert_close(attn.linear_attention(q, k, v), attn.quadratic_attention(q, k, v),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(("side", "branch"), [(4, "quadratic_attention"), (6, "linear_attention"),
                                              (8, "linear_attention")])
def test_branch_choice_follows_the_pixel_count(monkeypatch, side, branch):
    calls = []
    for name in ("linear_attention", "quadratic_attention"):
        original = getattr(LiteMLA, name)
        monkeypatch.setattr(LiteMLA, name, lambda self, *a, _o=original, _n=name: calls.append(_n) or _o(self, *a))
    block = EfficientViTBlock(32, norm="bn2d", act="silu", scales=(5,)).eval()
    assert block(torch.randn(2, 32, side, side)).shape == (2, 32, side, side)
    assert calls == [branch]


def test_resampling_shortcuts():
    x = torch.randn(2, 8, 4, 4)
    down = DownsampleLayer(8, 16, "ConvPixelUnshuffle", shortcut="averaging")
    with torch.no_grad():
        down.conv.weight.zero_()
        down.conv.bias.zero_()
    # pixel_unshuffle gives 32 channels; consecutive pairs are averaged into 16
    expected = torch.nn.functional.pixel_unshuffle(x, 2).unflatten(1, (16, 2)).mean(2)
    torch.testing.assert_close(down(x), expected)
    up = UpsampleLayer(16, 8, "ConvPixelShuffle", shortcut="duplicating")
    with torch.no_grad():
        up.conv.weight.zero_()
        up.conv.bias.zero_()
    y = torch.randn(2, 16, 2, 2)
    expected = torch.nn.functional.pixel_shuffle(y.repeat_interleave(2, dim=1), 2)
    torch.testing.assert_close(up(y), expected)
    assert DownsampleLayer(8, 16, "Conv", shortcut=None)(x).shape == (2, 16, 2, 2)
    assert UpsampleLayer(16, 8, "InterpolateConv", shortcut="duplicating")(y).shape == (2, 8, 4, 4)


def test_builders_name_bad_values():
    with pytest.raises(ValueError, match=r"unknown norm 'ln2d'; known: \['bn2d', 'trms2d'\]"):
        build_norm("ln2d", 8)
    with pytest.raises(ValueError, match=r"unknown act 'hswish'; known: \['gelu', 'relu', 'silu'\]"):
        build_act("hswish")
    with pytest.raises(ValueError, match="unknown block_type 'MBConv'"):
        build_block("MBConv", 32, "bn2d", "relu")
    gelu = build_act("gelu")
    assert gelu.approximate == "tanh"
