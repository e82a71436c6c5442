"""Building blocks of DC-AE (efficientvit ``dc_ae.py`` and ``nn/ops.py``) in plain PyTorch.

Shapes are ``(B, C, H, W)`` throughout. Each block owns its residual, so a stage is a plain
``nn.Sequential``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import ACTS, BLOCK_TYPES, HEAD_DIM, NORMS


class TritonRMSNorm2d(nn.Module):
    """RMS norm over channels with weight and bias, computed in fp32 (upstream ``trms2d``).

    ``y = x * rsqrt(mean_c(x^2) + eps) * weight + bias``
    """

    def __init__(self, channels: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=1, keepdim=True) + self.eps)
        y = y * self.weight.float()[:, None, None] + self.bias.float()[:, None, None]
        return y.to(x.dtype)


def build_norm(name: str | None, channels: int) -> nn.Module:
    """``bn2d``, ``trms2d`` or ``None`` (identity)."""
    if name is None:
        return nn.Identity()
    if name == "bn2d":
        return nn.BatchNorm2d(channels, eps=1e-5)
    if name == "trms2d":
        return TritonRMSNorm2d(channels, eps=1e-5)
    raise ValueError(f"unknown norm {name!r}; known: {sorted(NORMS)}")


def build_act(name: str | None) -> nn.Module:
    """``relu``, ``silu``, ``gelu`` (tanh approximation, as upstream) or ``None`` (identity)."""
    if name is None:
        return nn.Identity()
    if name == "relu":
        return nn.ReLU()
    if name == "silu":
        return nn.SiLU()
    if name == "gelu":
        return nn.GELU(approximate="tanh")
    raise ValueError(f"unknown act {name!r}; known: {sorted(ACTS)}")


def conv3x3(cin: int, cout: int, bias: bool = True, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)


def conv1x1(cin: int, cout: int, bias: bool = True, groups: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 1, bias=bias, groups=groups)


def channel_average(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Mean over groups of consecutive channels: ``(B, G*C, H, W) -> (B, C, H, W)``."""
    return x.unflatten(1, (out_channels, -1)).mean(dim=2)


def channel_duplicate(x: torch.Tensor, out_channels: int) -> torch.Tensor:
    """Repeat every channel in place: ``(B, C, H, W) -> (B, R*C, H, W)``."""
    return x.repeat_interleave(out_channels // x.shape[1], dim=1)


class ResBlock(nn.Module):
    """conv3x3 (bias) -> act -> conv3x3 (no bias) -> norm, plus identity. ``18C^2 + 3C`` parameters."""

    def __init__(self, channels: int, norm: str, act: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(channels, channels, bias=True)
        self.act = build_act(act)
        self.conv2 = conv3x3(channels, channels, bias=False)
        self.norm = build_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.norm(self.conv2(self.act(self.conv1(x))))


class MultiScaleProjection(nn.Module):
    """LiteMLA's extra scale: depthwise kxk on q, k, v, then a 1x1 conv grouped per head (no biases)."""

    def __init__(self, channels: int, heads: int, kernel_size: int) -> None:
        super().__init__()
        self.proj_in = nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2, groups=channels,
                                 bias=False)
        self.proj_out = conv1x1(channels, channels, bias=False, groups=3 * heads)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(qkv))


class LiteMLA(nn.Module):
    """Lightweight multi-scale linear attention with ReLU kernels (upstream ``LiteMLA``).

    Uses linear attention when the feature map has more than ``head_dim`` pixels, quadratic
    attention otherwise (both exactly as upstream, including the 1e-15 eps).
    """

    def __init__(self, channels: int, norm: str, scales: tuple[int, ...] = (), head_dim: int = HEAD_DIM,
                 eps: float = 1e-15) -> None:
        super().__init__()
        heads = channels // head_dim
        inner = heads * head_dim
        self.head_dim = head_dim
        self.eps = eps
        self.qkv = conv1x1(channels, 3 * inner, bias=False)
        self.multiscale = nn.ModuleList(MultiScaleProjection(3 * inner, heads, k) for k in scales)
        self.proj = conv1x1(inner * (1 + len(scales)), channels, bias=False)
        self.norm = build_norm(norm, channels)

    def linear_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, h, d, N)`` each -> ``(B, h, d, N)``, computed in fp32."""
        dtype = v.dtype
        q, k, v = q.float(), k.float(), v.float()
        v = F.pad(v, (0, 0, 0, 1), mode="constant", value=1.0)  # (B, h, d+1, N): the last row sums k
        vk = v @ k.transpose(-1, -2)  # (B, h, d+1, d)
        out = vk @ q  # (B, h, d+1, N)
        out = out[:, :, :-1] / (out[:, :, -1:] + self.eps)
        return out.to(dtype)

    def quadratic_attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``(B, h, d, N)`` each -> ``(B, h, d, N)``; the N x N map is normalised in fp32."""
        att = (k.transpose(-1, -2) @ q).float()  # (B, h, N, N)
        att = att / (att.sum(dim=2, keepdim=True) + self.eps)
        return v @ att.to(v.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(x)  # (B, 3*inner, H, W)
        if len(self.multiscale):
            qkv = torch.cat([qkv, *(scale(qkv) for scale in self.multiscale)], dim=1)
        qkv = qkv.reshape(B, -1, 3 * self.head_dim, H * W)  # (B, heads*(1+S), 3d, N): q, k, v per head
        q, k, v = qkv.chunk(3, dim=2)
        q, k = F.relu(q), F.relu(k)
        if H * W > self.head_dim:
            out = self.linear_attention(q, k, v)
        else:
            out = self.quadratic_attention(q, k, v)
        out = out.reshape(B, -1, H, W)  # (B, inner*(1+S), H, W)
        return x + self.norm(self.proj(out))


class GLUMBConv(nn.Module):
    """Gated inverted bottleneck: 1x1 C->8C (bias) -> act; depthwise 3x3 (bias); value * act(gate);
    1x1 4C->C (no bias) -> norm; plus identity."""

    def __init__(self, channels: int, norm: str, act: str, expand_ratio: int = 4) -> None:
        super().__init__()
        hidden = channels * expand_ratio
        self.conv_inverted = conv1x1(channels, 2 * hidden, bias=True)
        self.act = build_act(act)
        self.conv_depth = nn.Conv2d(2 * hidden, 2 * hidden, 3, padding=1, groups=2 * hidden, bias=True)
        self.conv_point = conv1x1(hidden, channels, bias=False)
        self.norm = build_norm(norm, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_depth(self.act(self.conv_inverted(x)))  # (B, 8C, H, W)
        value, gate = h.chunk(2, dim=1)  # (B, 4C, H, W) each
        return x + self.norm(self.conv_point(value * self.act(gate)))


class EfficientViTBlock(nn.Module):
    """LiteMLA (context) then GLUMBConv (local), each with its own residual."""

    def __init__(self, channels: int, norm: str, act: str, scales: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.attn = LiteMLA(channels, norm=norm, scales=scales)
        self.glu = GLUMBConv(channels, norm=norm, act=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.glu(self.attn(x))


class DownsampleLayer(nn.Module):
    """Halve H and W: ``ConvPixelUnshuffle`` (conv3x3 to Cout/4, pixel_unshuffle) or ``Conv``
    (stride-2 conv3x3), plus optionally the ``averaging`` shortcut (pixel_unshuffle, channel mean)."""

    def __init__(self, cin: int, cout: int, block_type: str, shortcut: str | None) -> None:
        super().__init__()
        self.cout = cout
        self.unshuffle = block_type == "ConvPixelUnshuffle"
        if self.unshuffle:
            self.conv = conv3x3(cin, cout // 4)
        elif block_type == "Conv":
            self.conv = conv3x3(cin, cout, stride=2)
        else:
            raise ValueError(f"unknown downsample_block_type {block_type!r}; known: ['Conv', 'ConvPixelUnshuffle']")
        if shortcut not in (None, "averaging"):
            raise ValueError(f"unknown downsample shortcut {shortcut!r}; known: ['averaging'] or None")
        self.shortcut = shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.unshuffle:
            y = F.pixel_unshuffle(y, 2)  # (B, Cout, H/2, W/2)
        if self.shortcut:
            y = y + channel_average(F.pixel_unshuffle(x, 2), self.cout)  # (B, 4Cin, H/2, W/2) -> Cout
        return y


class UpsampleLayer(nn.Module):
    """Double H and W: ``ConvPixelShuffle`` (conv3x3 to 4*Cout, pixel_shuffle) or ``InterpolateConv``
    (nearest x2, conv3x3), plus optionally the ``duplicating`` shortcut (channel repeat, pixel_shuffle)."""

    def __init__(self, cin: int, cout: int, block_type: str, shortcut: str | None) -> None:
        super().__init__()
        self.cout = cout
        self.shuffle = block_type == "ConvPixelShuffle"
        if self.shuffle:
            self.conv = conv3x3(cin, 4 * cout)
        elif block_type == "InterpolateConv":
            self.conv = conv3x3(cin, cout)
        else:
            raise ValueError(f"unknown upsample_block_type {block_type!r}; "
                             "known: ['ConvPixelShuffle', 'InterpolateConv']")
        if shortcut not in (None, "duplicating"):
            raise ValueError(f"unknown upsample shortcut {shortcut!r}; known: ['duplicating'] or None")
        self.shortcut = shortcut is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shuffle:
            y = F.pixel_shuffle(self.conv(x), 2)  # (B, Cout, 2H, 2W)
        else:
            y = self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        if self.shortcut:
            y = y + F.pixel_shuffle(channel_duplicate(x, 4 * self.cout), 2)
        return y


def build_block(block_type: str, channels: int, norm: str, act: str) -> nn.Module:
    """One width-preserving block by its upstream name."""
    if block_type == "ResBlock":
        return ResBlock(channels, norm=norm, act=act)
    if block_type == "EViT_GLU":
        return EfficientViTBlock(channels, norm=norm, act=act, scales=())
    if block_type == "EViTS5_GLU":
        return EfficientViTBlock(channels, norm=norm, act=act, scales=(5,))
    raise ValueError(f"unknown block_type {block_type!r}; known: {sorted(BLOCK_TYPES)}")
