"""Diverse Embedding Expansion (DEE) of DEEN (Zhang & Wang, CVPR 2023).

DEE turns every feature map into ``1 + branches`` maps: the map itself and one
new map per generator branch. The new maps are stacked along the *batch* axis,
so the layers after DEE see ``(1 + branches) * B`` samples, ordered
``[x, branch_1(x), branch_2(x), ...]``, each block in the input's order.
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
        self.views = 1 + branches

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (views * B, C, H, W), ordered [x, b_1(x), ..., b_k(x)]."""
        return self.dropout(torch.cat([x, *(branch(x) for branch in self.branches)], dim=0))
