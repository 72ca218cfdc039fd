"""Global pooling of a (B, C, H, W) feature map to (B, C)."""
from __future__ import annotations

import torch
from torch import nn


class GlobalAvgPooling(nn.Module):
    """Average over all positions: (B, C, H, W) -> (B, C)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling, ``(mean_hw x^p)^(1/p)``: p = 1 is average, p -> inf is max pooling.

    Args:
        p: initial power.
        learnable: train p (a parameter) or keep it fixed (a buffer).
        eps: lower clamp of the input, so the root has no infinite gradient at 0.
    """

    def __init__(self, p: float = 3.0, learnable: bool = True, eps: float = 1e-6) -> None:
        super().__init__()
        p_tensor = torch.tensor([float(p)])
        if learnable:
            self.p = nn.Parameter(p_tensor)
        else:
            self.register_buffer("p", p_tensor)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, C), computed in float32 (x^p under- or overflows in half)."""
        p = self.p.float()
        return x.float().clamp(min=self.eps).pow(p).mean(dim=(2, 3)).pow(1.0 / p)

    def extra_repr(self) -> str:
        kind = "learnable" if isinstance(self.p, nn.Parameter) else "fixed"
        return f"p={self.p.item():.3f} ({kind}), eps={self.eps}"
