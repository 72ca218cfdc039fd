"""DEEN's network modules (Zhang & Wang, CVPR 2023; public code ZYK100/LLCM, DEEN/).

Diverse Embedding Expansion (DEE) turns every feature map into ``1 + branches``
maps: the map itself and one new map per generator branch. The new maps are stacked
along the *batch* axis, so the layers after DEE see ``(1 + branches) * B`` samples,
ordered ``[x, branch_1(x), branch_2(x), ...]``, each block in the input's order.

A Multi-level Feature Aggregation (MFA) block refines a stage output ``x_high``
(B, high, H, W) with the map that entered the stage, ``x_low`` (B, low, sH, sW),
where s (``stride``) is 1 when the stage keeps the spatial size (layer1) and 2 when it
halves it. It is a channel non-local part followed by a spatial non-local part, both
residual on ``x_high`` with a zero-initialised output BatchNorm, so a new block is the
identity. Its output feeds the next stage and is the ``x_low`` of the next block. As
in DEEN's published code, the affinities are divided by their last size (channels
for the channel part, tokens for the spatial part) and no softmax is applied;
``softmax=True`` applies the paper's softmax over that axis instead.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

_DILATIONS = (1, 2, 3)


class ExpansionBranch(nn.Module):
    """One generator: mean of three dilated 3x3 convs C -> C/4, ReLU, 1x1 conv C/4 -> C.

    The three convs (dilation and padding 1, 2, 3; no bias) keep the spatial size.
    All four convs get Kaiming-normal weights (fan_in, gain sqrt(2)), as in DEEN;
    the bias of the 1x1 conv keeps PyTorch's default.

    Args:
        channels: C, a multiple of 4.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        inner = channels // 4
        self.dilated = nn.ModuleList(
            nn.Conv2d(channels, inner, kernel_size=3, padding=d, dilation=d, bias=False)
            for d in _DILATIONS)
        self.project = nn.Conv2d(inner, channels, kernel_size=1)
        for conv in (*self.dilated, self.project):
            nn.init.kaiming_normal_(conv.weight, a=0.0, mode="fan_in")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        mixed = sum(conv(x) for conv in self.dilated) / len(self.dilated)
        return self.project(F.relu(mixed))


class DiverseEmbeddingExpansion(nn.Module):
    """``Dropout(cat([x, b_1(x), ..., b_k(x)], dim=0))``: no residual, original kept.

    The dropout covers the original map as well. The module is used in the same
    way at test time, where the dropout is inactive and every image yields
    ``views`` embeddings.

    Args:
        channels: C of the input map, a multiple of 4.
        branches: number of generator branches k (DEEN uses 2).
        dropout: dropout probability over the whole output.
    """

    def __init__(self, channels: int, branches: int = 2, dropout: float = 0.01) -> None:
        super().__init__()
        if channels < 4 or channels % 4:
            raise ValueError(f"DEE channels must be a positive multiple of 4, got {channels}")
        if branches < 1:
            raise ValueError(f"DEE needs at least one branch, got {branches}")
        self.branches = nn.ModuleList(ExpansionBranch(channels) for _ in range(branches))
        self.dropout = nn.Dropout(p=dropout)
        self.views = self.views_factor = 1 + branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (views * B, C, H, W), ordered [x, b_1(x), ..., b_k(x)]."""
        return self.dropout(torch.cat([x, *(branch(x) for branch in self.branches)], dim=0))


def _zero_bn_projection(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """1x1 conv + BatchNorm whose weight and bias start at zero."""
    out = nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride),
                        nn.BatchNorm2d(out_channels))
    nn.init.zeros_(out[1].weight)
    nn.init.zeros_(out[1].bias)
    return out


def _normalise(energy: torch.Tensor, softmax: bool) -> torch.Tensor:
    return torch.softmax(energy, dim=-1) if softmax else energy / energy.shape[-1]


class ChannelNonLocal(nn.Module):
    """Channel non-local part (CNL): a (low x low) channel affinity applied to ``g(x_low)``.

    theta = 1x1 conv high -> low on ``x_high``; phi (stride s) and g = 1x1 convs
    low -> low on ``x_low``. With theta (B, low, HW), phi (B, low, HW) and
    g (B, low, s^2 HW): ``y = A g`` with ``A = theta phi^T / low``, reshaped to
    (B, low, sH, sW); output ``x_high + BN(conv_s(y))`` (1x1 conv low -> high, stride s).

    Args:
        high: channels of ``x_high``.
        low: channels of ``x_low``.
        stride: s, the size ratio of ``x_low`` to ``x_high`` (1 or 2).
        softmax: softmax over the affinity rows instead of dividing by ``low``.
    """

    def __init__(self, high: int, low: int, stride: int = 1, softmax: bool = False) -> None:
        super().__init__()
        self.low = low
        self.softmax = softmax
        self.g = nn.Conv2d(low, low, kernel_size=1)
        self.theta = nn.Conv2d(high, low, kernel_size=1)
        self.phi = nn.Conv2d(low, low, kernel_size=1, stride=stride)
        self.out = _zero_bn_projection(low, high, stride)

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
        """x_high (B, high, H, W), x_low (B, low, sH, sW) -> (B, high, H, W)."""
        b = x_high.shape[0]
        g = self.g(x_low).reshape(b, self.low, -1)  # (B, low, s^2 HW)
        theta = self.theta(x_high).reshape(b, self.low, -1)  # (B, low, HW)
        phi = self.phi(x_low).reshape(b, self.low, -1).transpose(1, 2)  # (B, HW, low)
        affinity = _normalise(torch.bmm(theta, phi), self.softmax)  # (B, low, low)
        y = torch.bmm(affinity, g).reshape(b, self.low, *x_low.shape[2:])
        return x_high + self.out(y)


class SpatialNonLocal(nn.Module):
    """Spatial non-local part (PNL): a token affinity between ``x_high`` and ``x_low``.

    theta = 1x1 conv high -> low/r on ``x_high``; phi, g = 1x1 convs low -> low/r
    on ``x_low`` (no stride). Tokens follow DEEN's published reshape: a
    (B, low/r, h, w) map is read as (B, low, low/r * h * w / low), i.e. each
    ``low``-dimensional token is a column of that (low, -1) view, so with r = 2 a
    token mixes two channels and one half of the spatial grid. With M_h tokens
    from ``x_high`` and M_l from ``x_low``: ``y = A g`` with
    ``A = theta^T phi / M_l`` (B, M_h, M_l), read back as (B, low/r, H, W);
    output ``x_high + BN(conv(y))`` (1x1 conv low/r -> high).

    Args:
        high: channels of ``x_high``.
        low: channels of ``x_low``.
        reduction: r, the inner width is low // r.
        softmax: softmax over the affinity rows instead of dividing by M_l.
    """

    def __init__(self, high: int, low: int, reduction: int = 2, softmax: bool = False) -> None:
        super().__init__()
        self.low = low
        self.inner = low // reduction
        self.softmax = softmax
        self.g = nn.Conv2d(low, self.inner, kernel_size=1)
        self.theta = nn.Conv2d(high, self.inner, kernel_size=1)
        self.phi = nn.Conv2d(low, self.inner, kernel_size=1)
        self.out = _zero_bn_projection(self.inner, high, 1)

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
        """x_high (B, high, H, W), x_low (B, low, H', W') -> (B, high, H, W).

        ``low/r * H * W`` and ``low/r * H' * W'`` must be multiples of ``low``.
        """
        b = x_high.shape[0]
        for name, x in (("x_high", x_high), ("x_low", x_low)):
            if (self.inner * x.shape[2] * x.shape[3]) % self.low:
                raise ValueError(f"{name} of spatial size {tuple(x.shape[2:])} cannot be cut "
                                 f"into {self.low}-dimensional tokens")
        g = self.g(x_low).reshape(b, self.low, -1).transpose(1, 2)  # (B, M_l, low)
        theta = self.theta(x_high).reshape(b, self.low, -1).transpose(1, 2)  # (B, M_h, low)
        phi = self.phi(x_low).reshape(b, self.low, -1)  # (B, low, M_l)
        affinity = _normalise(torch.bmm(theta, phi), self.softmax)  # (B, M_h, M_l)
        y = torch.bmm(affinity, g).transpose(1, 2).reshape(b, self.inner, *x_high.shape[2:])
        return x_high + self.out(y)


class MFA(nn.Module):
    """MFA block: ``PNL(CNL(x_high, x_low), x_low)``.

    DEEN's blocks: MFA(256, 64) after layer1 with the stem output as ``x_low``
    (same spatial size, stride 1); MFA(512, 256, stride=2) after layer2 and
    MFA(1024, 512, stride=2) after layer3, each with the previous block's output.

    Args:
        high: channels of the stage output ``x_high``.
        low: channels of ``x_low``.
        stride: size ratio of ``x_low`` to ``x_high`` (1 or 2).
        softmax: the paper's softmax affinities instead of the published scaling.
    """

    def __init__(self, high: int, low: int, stride: int = 1, softmax: bool = False) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"MFA stride must be 1 or 2, got {stride}")
        self.stride = stride
        self.cnl = ChannelNonLocal(high, low, stride, softmax)
        self.pnl = SpatialNonLocal(high, low, softmax=softmax)

    def forward(self, x_high: torch.Tensor, x_low: torch.Tensor) -> torch.Tensor:
        """x_high (B, high, H, W), x_low (B, low, sH, sW) -> (B, high, H, W)."""
        h, w = x_high.shape[2:]
        if x_low.shape[0] != x_high.shape[0] or tuple(x_low.shape[2:]) != (
                self.stride * h, self.stride * w):
            raise ValueError(f"MFA with stride {self.stride} expects x_low of size "
                             f"({x_high.shape[0]}, *, {self.stride * h}, {self.stride * w}) "
                             f"for x_high {tuple(x_high.shape)}, got {tuple(x_low.shape)}")
        return self.pnl(self.cnl(x_high, x_low), x_low)
