"""CAJ (Ye et al., "Channel Augmented Joint Learning for Visible-Infrared Recognition",
ICCV 2021; public code mangye16/Cross-Modal-Re-ID-baseline, ICCV21_CAJ/): its adaptive
weighted triplet (ADP), with the config section ``[CAJ]``.

CAJ trains AGW's network (``modeling.methods.agw``); its joint batches (visible
images, a channel-exchanged copy of each, infrared images) and per-part channel rules
are data options (``DATA.VISIBLE_COPY``, ``DATA.CHANNEL_AUG_*``);
``configs/caj/caj.ini`` is the recipe.
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from layers.criterion import LOSS_TERMS, LossSpec, metric_term
from modeling.methods.agw import published_weighted_distances, soft_margin
from utils.config import Key, add_config_section

add_config_section("CAJ", "CAJ's adaptive weighted triplet (ADP)", [
    Key("ADP_WEIGHT", 1.0, "Weight of CAJ's adaptive (ADP) triplet loss (LOSS.TERMS adp).",
        range=(0, None)),
    Key("ADP_ALPHA", 1.0, "ADP: alpha, the softmax temperature of its positive and negative "
        "weights.", range=(0, None)),
    Key("ADP_GAMMA", 1.0, "ADP: gamma, the scale of the distance difference.", range=(0, None)),
    Key("ADP_SQUARE", True, "ADP: yes = soft margin on the squared difference (CAJ's "
        "published command, square 1); no = on the difference."),
], owner=__name__, renames={"LOSS.ADP_WEIGHT": "ADP_WEIGHT", "LOSS.ADP_ALPHA": "ADP_ALPHA",
                            "LOSS.ADP_GAMMA": "ADP_GAMMA", "LOSS.ADP_SQUARE": "ADP_SQUARE"})


def adaptive_triplet_adp(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                         alpha: float = 1.0, gamma: float = 1.0,
                         square: bool = True) -> torch.Tensor:
    """CAJ's adaptive-weight triplet (ADP), as in its published code.

    Per anchor, ``p`` = positives' distances weighted by the published softmax of
    ``alpha * d`` and ``n`` = negatives' distances weighted by that of
    ``-alpha * d`` (``modeling.methods.agw.published_softmax_weights``). Then, with
    ``softmargin(x, y) = mean log(1 + exp(-y x))``:

    * ``square``: ``softmargin(min(gamma (p - n)^2, 88), y)`` with y = -1 where
      p > n and +1 otherwise (the clamp keeps exp finite in float32);
    * otherwise: ``softmargin(gamma (n - p), 1)``.

    Every anchor counts; one without positives (negatives) gets p = 0 (n = 0).

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks (e.g. from ``layers.metric.mining_masks``).
        alpha: weight temperature.
        gamma: scale of the difference.
        square: the squared-difference form (CAJ's ``square=1``).
    """
    far_pos, close_neg = published_weighted_distances(dist, pos, neg, alpha)
    if not square:
        return soft_margin(gamma * (close_neg - far_pos), torch.ones_like(far_pos))
    diff = (gamma * (far_pos - close_neg).pow(2)).clamp(max=88.0)
    violated = (far_pos > close_neg).to(diff.dtype)
    sign = 1.0 - 2.0 * violated  # -1 where p > n: a violation costs log(1 + exp(diff))
    return soft_margin(diff, sign)


def _adp(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return metric_term(cfg, adaptive_triplet_adp, alpha=cfg.CAJ.ADP_ALPHA,
                       gamma=cfg.CAJ.ADP_GAMMA, square=cfg.CAJ.ADP_SQUARE)


LOSS_TERMS["adp"] = LossSpec("loss_adp", _adp, lambda cfg: cfg.CAJ.ADP_WEIGHT)
