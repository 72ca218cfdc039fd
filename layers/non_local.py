"""Non-local block (Wang et al., CVPR 2018), dot-product form as in AGW."""
from __future__ import annotations

import torch
from torch import nn


class NonLocalBlock(nn.Module):
    """Residual non-local block: ``x + BN(W(f(x) g(x)))`` with f = theta^T phi / N.

    The output BatchNorm starts at zero (weight and bias), so a freshly inserted
    block is the identity and does not disturb pretrained features.

    Args:
        channels: input and output channels C.
        reduction: inner width = C // reduction (at least 1), unless ``inner`` is given.
        inner: the inner width itself (AGW's published blocks: 1).
    """

    def __init__(self, channels: int, reduction: int = 2, inner: int = 0) -> None:
        super().__init__()
        inner = inner or max(1, channels // reduction)
        self.inner = inner
        self.theta = nn.Conv2d(channels, inner, kernel_size=1)
        self.phi = nn.Conv2d(channels, inner, kernel_size=1)
        self.g = nn.Conv2d(channels, inner, kernel_size=1)
        self.out = nn.Sequential(nn.Conv2d(inner, channels, kernel_size=1),
                                 nn.BatchNorm2d(channels))
        nn.init.zeros_(self.out[1].weight)
        nn.init.zeros_(self.out[1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W)."""
        b, _, h, w = x.shape
        n = h * w
        theta = self.theta(x).flatten(2).transpose(1, 2)  # (B, N, C')
        phi = self.phi(x).flatten(2)  # (B, C', N)
        g = self.g(x).flatten(2).transpose(1, 2)  # (B, N, C')
        # Without a softmax the product is associative: pick the cheaper order.
        if n > self.inner:
            y = torch.bmm(theta, torch.bmm(phi, g) / n)
        else:
            y = torch.bmm(torch.bmm(theta, phi) / n, g)
        y = y.transpose(1, 2).reshape(b, self.inner, h, w)
        return x + self.out(y)
