"""The training criterion: a dict of weighted, named loss terms chosen by LOSS.TERMS."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from layers.deen_losses import (
    adaptive_triplet_adp,
    center_guided_pair_mining,
    orthogonality_loss,
    weighted_regularized_triplet_published,
)
from layers.metric import (
    CenterLoss,
    batch_distance,
    batch_hard_triplet,
    mining_masks,
    weighted_regularized_triplet,
)
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.registry import Registry

Outputs = dict[str, torch.Tensor | int]

# Terms that need the modality-specific ID heads (the model builds them when any is used).
HEAD_TERMS = ("modality_id", "kl")


def _head_logits(outputs: Outputs, term: str) -> torch.Tensor:
    if "head_logits" not in outputs:
        raise ValueError(f"loss term {term!r} needs outputs['head_logits']; "
                         "build the model with the same LOSS.TERMS")
    return outputs["head_logits"]


class IdentityLoss(nn.Module):
    """Cross-entropy of the shared classifier on every image, optional label smoothing."""

    def __init__(self, label_smooth: float) -> None:
        super().__init__()
        self.label_smooth = label_smooth

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"].float(), pid, label_smoothing=self.label_smooth)


class MetricTerm(nn.Module):
    """A metric loss on ``outputs[feat_key]``: ``loss(dist, pos, neg)`` over the batch's
    pairwise distances and the positive / negative masks of ``mining`` (``layers.metric``).

    Batch-hard triplet, AGW's WRT (exact or published) and CAJ's ADP are all of this form.
    """

    def __init__(self, distance: str, mining: str, feat_key: str,
                 loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> None:
        super().__init__()
        self.distance, self.mining, self.feat_key, self.loss = distance, mining, feat_key, loss

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        dist = batch_distance(outputs[self.feat_key], self.distance)
        pos, neg = mining_masks(pid, modality, self.mining)
        return self.loss(dist, pos, neg)


def _views(outputs: Outputs, term: str) -> list[torch.Tensor]:
    """The pooled features of each embedding view: [original, branch 1, ...], (B, D) each."""
    views = int(outputs.get("views", 1))
    if views < 2:
        raise ValueError(f"loss term {term!r} needs expanded embeddings: set "
                         "MODEL.DEE_BRANCHES")
    return list(outputs["feat"].float().chunk(views))


class CPMTerm(nn.Module):
    """DEEN's centre-guided pair mining: every expanded view against the originals, summed."""

    def __init__(self, margin: float, detach_own: bool) -> None:
        super().__init__()
        self.margin, self.detach_own = margin, detach_own

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        original, *expanded = _views(outputs, "cpm")
        b = original.shape[0]
        return torch.stack([center_guided_pair_mining(original, e, pid[:b], modality[:b],
                                                      self.margin, self.detach_own)
                            for e in expanded]).sum()


class OrthogonalityTerm(nn.Module):
    """DEEN's orthogonality of the expanded views' pooled features, over every pair of them."""

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        _, *expanded = _views(outputs, "orth")
        views = len(expanded) + 1
        pairs = [orthogonality_loss(a, b, views) for i, a in enumerate(expanded)
                 for b in expanded[i + 1:]]
        return torch.stack(pairs).sum() if pairs else outputs["feat"].sum() * 0.0


class CenterTerm(nn.Module):
    """Center loss on ``outputs[feat_key]``; the centres live in ``self.center``."""

    def __init__(self, num_classes: int, feat_dim: int, alpha: float, feat_key: str) -> None:
        super().__init__()
        self.center = CenterLoss(num_classes, feat_dim, alpha)
        self.feat_key = feat_key

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        return self.center(outputs[self.feat_key], pid)


class ModalityIdentityLoss(nn.Module):
    """Each modality head's cross-entropy on the images of its own modality.

    The two per-head means are summed, as the source design adds a visible and
    an infrared ID loss. A modality absent from the batch contributes nothing.
    """

    def __init__(self, label_smooth: float) -> None:
        super().__init__()
        self.label_smooth = label_smooth

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        logits = _head_logits(outputs, "modality_id").float()  # (2, B, C)
        total = logits.sum() * 0.0
        for head in (VISIBLE, INFRARED):
            own = modality == head
            if bool(own.any()):
                total = total + F.cross_entropy(logits[head][own], pid[own],
                                                label_smoothing=self.label_smooth)
        return total


class ModalityConsistencyLoss(nn.Module):
    """KL consistency between the two modality heads (the source design).

    On the images of each modality, the head of that modality (log-probabilities)
    is pulled towards the other head's detached probabilities:
    ``KL(p_other || p_own)``, averaged over those images; the two modalities'
    terms are summed. Zero when the heads agree.
    """

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        logits = _head_logits(outputs, "kl").float()  # (2, B, C)
        total = logits.sum() * 0.0
        for head, other in ((VISIBLE, INFRARED), (INFRARED, VISIBLE)):
            own = modality == head
            if bool(own.any()):
                log_p = F.log_softmax(logits[head][own], dim=1)
                target = F.log_softmax(logits[other][own].detach(), dim=1)
                total = total + F.kl_div(log_p, target, reduction="batchmean", log_target=True)
        return total


def _id(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return IdentityLoss(cfg.LOSS.LABEL_SMOOTH)


def _metric(cfg: CfgNode, loss: Callable[..., torch.Tensor], **kwargs: float | bool
            ) -> MetricTerm:
    return MetricTerm(cfg.LOSS.TRIPLET_DISTANCE, cfg.LOSS.TRIPLET_MINING, _feat_key(cfg),
                      partial(loss, **kwargs))


def _triplet(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return _metric(cfg, batch_hard_triplet, margin=cfg.LOSS.MARGIN)


def _wrt(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return _metric(cfg, weighted_regularized_triplet if cfg.LOSS.WRT_FORM == "exact"
                   else weighted_regularized_triplet_published)


def _adp(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    loss = cfg.LOSS
    return _metric(cfg, adaptive_triplet_adp, alpha=loss.ADP_ALPHA, gamma=loss.ADP_GAMMA,
                   square=loss.ADP_SQUARE)


def _need_views(cfg: CfgNode, term: str, branches: int) -> None:
    if cfg.MODEL.DEE_BRANCHES < branches:
        raise UserError(f"LOSS.TERMS has {term}, which needs expanded embeddings: "
                        f"MODEL.DEE_BRANCHES >= {branches} (it is {cfg.MODEL.DEE_BRANCHES})")


def _cpm(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    _need_views(cfg, "cpm", 1)
    return CPMTerm(cfg.LOSS.CPM_MARGIN, cfg.LOSS.CPM_DETACH)


def _orth(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    _need_views(cfg, "orth", 2)
    return OrthogonalityTerm()


def _center(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return CenterTerm(num_classes, feat_dim, cfg.LOSS.CENTER_LR, _feat_key(cfg))


def _modality_id(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return ModalityIdentityLoss(cfg.LOSS.LABEL_SMOOTH)


def _kl(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return ModalityConsistencyLoss()


def _feat_key(cfg: CfgNode) -> str:
    return "bn_feat" if cfg.LOSS.METRIC_FEAT == "bn" else "feat"


@dataclass(frozen=True)
class LossSpec:
    """A loss term of LOSS.TERMS: its logged key, builder and weight.

    Attributes:
        key: name of the term in the loss dict and the logs (``loss_id``, ...).
        build: ``build(cfg, num_classes, feat_dim)`` -> the term module, called as
            ``term(outputs, pid, modality)`` -> scalar.
        weight: ``weight(cfg)`` -> the term's weight.
    """

    key: str
    build: Callable[[CfgNode, int, int], nn.Module]
    weight: Callable[[CfgNode], float]


# LOSS.TERMS name -> its spec; the config's valid term names are these keys.
LOSS_TERMS: Registry = Registry("LOSS.TERMS", "loss term")
LOSS_TERMS.update({
    "id": LossSpec("loss_id", _id, lambda cfg: cfg.LOSS.ID_WEIGHT),
    "triplet": LossSpec("loss_tri", _triplet, lambda cfg: cfg.LOSS.TRIPLET_WEIGHT),
    "wrt": LossSpec("loss_wrt", _wrt, lambda cfg: cfg.LOSS.WRT_WEIGHT),
    "center": LossSpec("loss_center", _center, lambda cfg: cfg.LOSS.CENTER_WEIGHT),
    "modality_id": LossSpec("loss_modality_id", _modality_id,
                            lambda cfg: cfg.LOSS.MODALITY_ID_WEIGHT),
    "kl": LossSpec("loss_kl", _kl, lambda cfg: cfg.LOSS.KL_WEIGHT),
    "adp": LossSpec("loss_adp", _adp, lambda cfg: cfg.LOSS.ADP_WEIGHT),
    "cpm": LossSpec("loss_cpm", _cpm, lambda cfg: cfg.LOSS.CPM_WEIGHT),
    "orth": LossSpec("loss_orth", _orth, lambda cfg: cfg.LOSS.ORTH_WEIGHT),
})


class Criterion(nn.Module):
    """Weighted sum of named terms; the terms are also returned so each can be logged.

    Call ``criterion(outputs, pid, modality)`` with the model's training outputs
    (``feat``, ``bn_feat``, ``logits`` (V*B, C), ``views`` V and, for the head
    terms, ``head_logits`` (2, V*B, C)), pid (B,) and modality (B,). The labels
    are tiled over the V embedding views, so every term sees one label per row.
    Returns ``(total, {'loss_id': ..., 'loss_tri': ..., ...})``: the float32 sum
    and the weighted scalar terms.
    """

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict({key: module for key, (module, _) in terms.items()})
        self.weights = {key: weight for key, (_, weight) in terms.items()}

    def forward(self, outputs: Outputs, pid: torch.Tensor, modality: torch.Tensor
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        views = int(outputs.get("views", 1))
        if views > 1:
            pid, modality = pid.repeat(views), modality.repeat(views)
        terms = {key: self.weights[key] * term(outputs, pid, modality)
                 for key, term in self.terms.items()}
        return torch.stack([t.float() for t in terms.values()]).sum(), terms


def build_criterion(cfg: CfgNode, num_classes: int, feat_dim: int) -> Criterion:
    """Build the criterion of ``cfg.LOSS.TERMS`` (names checked by the config)."""
    specs = [LOSS_TERMS[name] for name in cfg.LOSS.TERMS]
    return Criterion({s.key: (s.build(cfg, num_classes, feat_dim), float(s.weight(cfg)))
                      for s in specs})
