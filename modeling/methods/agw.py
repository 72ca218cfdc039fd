"""AGW (Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
TPAMI 2021; public code mangye16/Cross-Modal-Re-ID-baseline): its non-local blocks and
its weighted regularized triplet (WRT), with the config section ``[AGW]``.

The rest of AGW's network (modality-specific stems, GeM, BNNeck) is the core
network's (``MODEL.SHARED_FROM``, ``MODEL.POOLING``); ``configs/agw/agw.ini`` is the
recipe. CAJ (``modeling.methods.caj``) trains AGW's network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from layers.criterion import LOSS_TERMS, LossSpec, metric_term
from modeling.backbone import Backbone
from modeling.stages import INSERTIONS, Insertion
from utils.config import Key, add_config_section
from utils.errors import UserError

# Added to the normaliser of the published adaptive weights.
_WEIGHT_EPS = 1e-6


def _check(cfg: CfgNode, where: str) -> None:
    blocks = cfg.AGW.NON_LOCAL_BLOCKS
    if len(blocks) != 4 or min(blocks) < 0:
        raise UserError(f"{where}: AGW.NON_LOCAL_BLOCKS must be 4 non-negative counts "
                        "(layer1..layer4)")
    if cfg.MODEL.LAST_STAGE < 4 and blocks[3]:
        raise UserError(f"{where}: AGW.NON_LOCAL_BLOCKS puts blocks in layer4, which "
                        "MODEL.LAST_STAGE = 3 leaves out")


add_config_section("AGW", "AGW's non-local blocks and weighted regularized triplet", [
    Key("NON_LOCAL_BLOCKS", (0, 0, 0, 0), "Non-local blocks after the last blocks of each "
        "backbone stage (layer1..layer4); AGW uses 0, 2, 3, 0. In a modality-specific stage "
        "each stream has its own.", network=True),
    Key("NON_LOCAL_REDUCTION", 2, "Non-local inner width = channels // NON_LOCAL_REDUCTION "
        "(when NON_LOCAL_INNER is 0).", range=(1, None), network=True),
    Key("NON_LOCAL_INNER", 0, "Non-local inner width in channels; 0 = channels // "
        "NON_LOCAL_REDUCTION. AGW's and CAJ's published blocks have 1 (their reduc_ratio // "
        "reduc_ratio).", range=(0, None), network=True),
    Key("WRT_WEIGHT", 1.0, "Weight of the weighted regularized triplet loss (LOSS.TERMS wrt).",
        range=(0, None)),
    Key("WRT_FORM", "exact", "WRT's soft weights: exact (masked softmax, max-shifted) or "
        "published (AGW's code: unshifted negatives, +1e-6 in the normaliser; departs from "
        "exact beyond distances of about 10).", choices=("exact", "published")),
], owner=__name__, check=_check, renames={
    "MODEL.NON_LOCAL_BLOCKS": "NON_LOCAL_BLOCKS",
    "MODEL.NON_LOCAL_REDUCTION": "NON_LOCAL_REDUCTION",
    "MODEL.NON_LOCAL_INNER": "NON_LOCAL_INNER", "LOSS.WRT_WEIGHT": "WRT_WEIGHT",
    "LOSS.WRT_FORM": "WRT_FORM"})


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


def _non_local(cfg: CfgNode, stage: int, backbone: Backbone) -> list[nn.Module] | None:
    count = cfg.AGW.NON_LOCAL_BLOCKS[stage - 1]
    if not count:
        return None
    if count > len(backbone.layers[stage - 1]):
        counts = ", ".join(map(str, cfg.AGW.NON_LOCAL_BLOCKS))
        raise UserError(f"AGW.NON_LOCAL_BLOCKS = {counts} asks for {count} blocks in "
                        f"layer{stage}, which has "
                        f"{len(backbone.layers[stage - 1])} blocks")
    width = backbone.channels[stage]
    return [NonLocalBlock(width, cfg.AGW.NON_LOCAL_REDUCTION, cfg.AGW.NON_LOCAL_INNER)
            for _ in range(count)]


INSERTIONS["non_local"] = Insertion(_non_local, inside=True, order=10)


def weighted_regularized_triplet(dist: torch.Tensor, pos: torch.Tensor,
                                 neg: torch.Tensor) -> torch.Tensor:
    """AGW's weighted regularized triplet: no margin, soft weights over all pairs.

    Each anchor's positive distance is the softmax(d)-weighted mean over its
    positives, the negative distance the softmax(-d)-weighted mean over its
    negatives; the loss is ``softplus(d_pos - d_neg)`` averaged over anchors.

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks from ``layers.metric.mining_masks``.
    """
    valid = pos.any(dim=1) & neg.any(dim=1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    dist, pos, neg = dist[valid], pos[valid], neg[valid]
    w_pos = torch.softmax(dist.masked_fill(~pos, float("-inf")), dim=1)
    w_neg = torch.softmax((-dist).masked_fill(~neg, float("-inf")), dim=1)
    far_pos = (dist * w_pos).sum(dim=1)
    close_neg = (dist * w_neg).sum(dim=1)
    return F.softplus(far_pos - close_neg).mean()


def published_softmax_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row weights ``exp(s - max) * mask / (sum exp(s - max) * mask + 1e-6)``.

    As published, the max is taken over ``scores * mask``, whose unmasked entries
    are 0: for non-positive scores (negatives, scored -d) the shift is 0, so
    nothing is shifted, the exponentials of far negatives underflow and the
    1e-6 dominates the normaliser (weights summing to well below 1 once every
    negative is beyond about 14 / alpha).
    """
    shift = (scores * mask).amax(dim=1, keepdim=True)
    exp = torch.exp(scores - shift) * mask
    return exp / (exp.sum(dim=1, keepdim=True) + _WEIGHT_EPS)


def published_weighted_distances(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                                 alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor soft-max positive and soft-min negative distances, as published."""
    dist = dist.float()
    pos, neg = pos.to(dist.dtype), neg.to(dist.dtype)
    dist_pos, dist_neg = dist * pos, dist * neg
    far_pos = (dist_pos * published_softmax_weights(dist_pos * alpha, pos)).sum(dim=1)
    close_neg = (dist_neg * published_softmax_weights(-dist_neg * alpha, neg)).sum(dim=1)
    return far_pos, close_neg


def soft_margin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean log(1 + exp(-y x))`` (SoftMarginLoss), evaluated as a softplus: the same
    values where the direct formula is finite, and finite where it overflows."""
    return F.softplus(-y * x).mean()


def weighted_regularized_triplet_published(dist: torch.Tensor, pos: torch.Tensor,
                                           neg: torch.Tensor) -> torch.Tensor:
    """AGW's weighted regularized triplet exactly as published (``TripletLoss_WRT``).

    ``mean log(1 + exp(p - n))`` with the published weights: the positives are
    shifted by their max, the negatives are not shifted, and the normaliser has
    +1e-6 (see ``published_softmax_weights``). Against the exact masked softmax of
    :func:`weighted_regularized_triplet` the 1e-6 matters once
    ``sum_n exp(-d_n)`` gets small: with the nearest negatives about 1, 4, 8, 12
    and 15 away, the two losses differ by about 1e-7, 1e-6, 1e-4, 1e-3 and 0.3.
    Beyond about 30 the soft-min negative is ~0, the loss becomes
    ``softplus(p)`` and no longer pushes negatives away. The soft margin is
    evaluated as a softplus: the published ``log(1 + exp(.))`` gives inf (and NaN
    gradients) once ``p - n`` exceeds about 88.7 in float32, as the distances of
    features from random weights do; this stays finite there and equals it
    elsewhere. Every anchor counts (one without positives gets p = 0).

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks.
    """
    far_pos, close_neg = published_weighted_distances(dist, pos, neg, 1.0)
    return soft_margin(close_neg - far_pos, torch.ones_like(far_pos))


def _wrt(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return metric_term(cfg, weighted_regularized_triplet if cfg.AGW.WRT_FORM == "exact"
                       else weighted_regularized_triplet_published)


LOSS_TERMS["wrt"] = LossSpec("loss_wrt", _wrt, lambda cfg: cfg.AGW.WRT_WEIGHT)
