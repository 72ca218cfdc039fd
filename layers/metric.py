"""Metric-learning losses: pair masks, batch-hard triplet, center loss.

The distances they read come from ``utils.distances.pairwise_distance``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mining_masks(pid: torch.Tensor, modality: torch.Tensor,
                 mining: str = "all") -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pair masks.

    Args:
        pid: (B,) identity labels.
        modality: (B,) modality ids.
        mining: ``all`` (any pair; an anchor is its own positive) or ``cross``
            (only pairs whose two images have different modalities).

    Returns:
        (B, B) bool masks ``pos``, ``neg``.
    """
    same = pid[:, None] == pid[None, :]
    pos, neg = same, ~same
    if mining == "cross":
        cross = modality[:, None] != modality[None, :]
        pos, neg = pos & cross, neg & cross
    elif mining != "all":
        raise ValueError(f"unknown mining {mining!r}; expected all or cross")
    return pos, neg


def batch_hard_triplet(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                       margin: float) -> torch.Tensor:
    """Batch-hard triplet loss: mean of ``relu(max d(a,p) - min d(a,n) + margin)``.

    Anchors without a positive or a negative under the masks are left out; a
    batch with no usable anchor gives 0 (still attached to the graph).

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks from ``mining_masks``.
        margin: hinge margin.
    """
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    dist, pos, neg = dist[valid], pos[valid], neg[valid]
    hardest_pos = dist.masked_fill(~pos, float("-inf")).amax(dim=1)
    hardest_neg = dist.masked_fill(~neg, float("inf")).amin(dim=1)
    return F.relu(hardest_pos - hardest_neg + margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al., ECCV 2016): mean squared distance to the class centre.

    The centres are a buffer updated by the paper's rule, not by the optimizer:
    after each training forward, ``c_j <- c_j - alpha * sum_{y_i=j}(c_j - x_i) / (1 + n_j)``.
    So their rate ``alpha`` is independent of the optimizer, the learning-rate
    schedule and weight decay, and they are saved in ``state_dict()``.

    Args:
        num_classes: C.
        feat_dim: D.
        alpha: centre update rate (0..1).
    """

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        self.alpha = alpha
        self.register_buffer("centers", torch.randn(num_classes, feat_dim))

    def forward(self, feat: torch.Tensor, pid: torch.Tensor) -> torch.Tensor:
        """feat (B, D), pid (B,) -> scalar; updates the centres in training mode."""
        feat = feat.float()
        centers = self.centers.index_select(0, pid)
        loss = (feat - centers).pow(2).sum(dim=1).mean()
        if self.training:
            self._update(feat.detach(), pid)
        return loss

    @torch.no_grad()
    def _update(self, feat: torch.Tensor, pid: torch.Tensor) -> None:
        diff = self.centers.index_select(0, pid) - feat
        delta = torch.zeros_like(self.centers).index_add_(0, pid, diff)
        counts = torch.bincount(pid, minlength=self.centers.shape[0]).to(delta.dtype)
        self.centers.sub_(self.alpha * delta / (1.0 + counts)[:, None])
