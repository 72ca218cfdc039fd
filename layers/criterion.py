"""The training criterion: a dict of weighted, named loss terms chosen by LOSS.TERMS.

A loss term is a module called as ``term(outputs, batch)``: ``outputs`` is the
model's training dict (``feat``, ``bn_feat``, ``logits``, ``views``, every stage's
map by name, the extras inserted modules recorded), ``batch`` a :class:`LossBatch`
with one label of each kind per row of the outputs. A method registers its terms
in ``LOSS_TERMS`` with a :class:`LossSpec` from its own module.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from layers.metric import CenterLoss, batch_hard_triplet, mining_masks
from utils.constants import INFRARED, VISIBLE
from utils.distances import pairwise_distance
from utils.registry import Registry

Outputs = dict[str, torch.Tensor | int]


@dataclass(frozen=True)
class LossBatch:
    """The labels of a training batch, one per row of the model's outputs.

    With V embedding views (an expanding network) the B images' labels are tiled V
    times, so row ``v * B + i`` of every field belongs to image i.

    Attributes:
        pid: (V*B,) identity labels 0..C-1.
        modality: (V*B,) 0 visible / 1 infrared.
        cam: (V*B,) camera ids.
        part: (V*B,) batch part (``data.transforms.PART_PLAIN``, ``PART_COPY``: CAJ's
            visible copies).
        views: V.
    """

    pid: torch.Tensor
    modality: torch.Tensor
    cam: torch.Tensor
    part: torch.Tensor
    views: int = 1

    @classmethod
    def from_batch(cls, batch: dict[str, torch.Tensor], views: int = 1) -> LossBatch:
        """The labels of a loader batch (``pid``, ``modality``; ``cam``, ``part`` if
        present), tiled over ``views``."""
        pid = batch["pid"]
        fields = [batch.get(k, torch.zeros_like(pid)) for k in ("pid", "modality", "cam", "part")]
        if views > 1:
            fields = [f.repeat(views) for f in fields]
        return cls(*fields, views=views)

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

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        return F.cross_entropy(outputs["logits"].float(), batch.pid,
                               label_smoothing=self.label_smooth)


class MetricTerm(nn.Module):
    """A metric loss on ``outputs[feat_key]``: ``loss(dist, pos, neg)`` over the batch's
    pairwise distances and the positive / negative masks of ``mining`` (``layers.metric``).

    Batch-hard triplet, AGW's WRT and CAJ's ADP are all of this form.
    """

    def __init__(self, distance: str, mining: str, feat_key: str,
                 loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
                 ) -> None:
        super().__init__()
        self.distance, self.mining, self.feat_key, self.loss = distance, mining, feat_key, loss

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        dist = pairwise_distance(outputs[self.feat_key], metric=self.distance)
        pos, neg = mining_masks(batch.pid, batch.modality, self.mining)
        return self.loss(dist, pos, neg)


class CenterTerm(nn.Module):
    """Center loss on ``outputs[feat_key]``; the centres live in ``self.center``."""

    def __init__(self, num_classes: int, feat_dim: int, alpha: float, feat_key: str) -> None:
        super().__init__()
        self.center = CenterLoss(num_classes, feat_dim, alpha)
        self.feat_key = feat_key

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        return self.center(outputs[self.feat_key], batch.pid)


class ModalityIdentityLoss(nn.Module):
    """Each modality head's cross-entropy on the images of its own modality.

    The two per-head means are summed, as the source design adds a visible and
    an infrared ID loss. A modality absent from the batch contributes nothing.
    """

    def __init__(self, label_smooth: float) -> None:
        super().__init__()
        self.label_smooth = label_smooth

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        pid, modality = batch.pid, batch.modality
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

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        modality = batch.modality
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


def metric_term(cfg: CfgNode, loss: Callable[..., torch.Tensor], **kwargs: float | bool
                ) -> MetricTerm:
    """A :class:`MetricTerm` of ``loss(dist, pos, neg, **kwargs)`` on LOSS.METRIC_FEAT with
    LOSS.TRIPLET_DISTANCE and LOSS.TRIPLET_MINING."""
    return MetricTerm(cfg.LOSS.TRIPLET_DISTANCE, cfg.LOSS.TRIPLET_MINING, _feat_key(cfg),
                      partial(loss, **kwargs))


def _triplet(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    return metric_term(cfg, batch_hard_triplet, margin=cfg.LOSS.MARGIN)


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
            ``term(outputs, batch)`` -> scalar (``batch``: a :class:`LossBatch`).
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
    "center": LossSpec("loss_center", _center, lambda cfg: cfg.LOSS.CENTER_WEIGHT),
    "modality_id": LossSpec("loss_modality_id", _modality_id,
                            lambda cfg: cfg.LOSS.MODALITY_ID_WEIGHT),
    "kl": LossSpec("loss_kl", _kl, lambda cfg: cfg.LOSS.KL_WEIGHT),
})


class Criterion(nn.Module):
    """Weighted sum of named terms; the terms are also returned so each can be logged.

    Call ``criterion(outputs, batch)`` with the model's training outputs and the
    loader's batch (``pid``, ``modality`` and, when present, ``cam``, ``part``, each
    (B,)); the labels are tiled over the outputs' V embedding views
    (:class:`LossBatch`). Returns ``(total, {'loss_id': ..., 'loss_tri': ..., ...})``:
    the float32 sum and the weighted scalar terms.
    """

    def __init__(self, terms: dict[str, tuple[nn.Module, float]]) -> None:
        super().__init__()
        self.terms = nn.ModuleDict({key: module for key, (module, _) in terms.items()})
        self.weights = {key: weight for key, (_, weight) in terms.items()}

    def forward(self, outputs: Outputs, batch: dict[str, torch.Tensor] | LossBatch | torch.Tensor,
                modality: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``criterion(outputs, batch)``, or ``criterion(outputs, pid, modality)``."""
        if modality is not None:
            batch = {"pid": batch, "modality": modality}
        if not isinstance(batch, LossBatch):
            batch = LossBatch.from_batch(batch, int(outputs.get("views", 1)))
        terms = {key: self.weights[key] * term(outputs, batch)
                 for key, term in self.terms.items()}
        return torch.stack([t.float() for t in terms.values()]).sum(), terms


def build_criterion(cfg: CfgNode, num_classes: int, feat_dim: int) -> Criterion:
    """Build the criterion of ``cfg.LOSS.TERMS`` (names checked by the config)."""
    specs = [LOSS_TERMS[name] for name in cfg.LOSS.TERMS]
    return Criterion({s.key: (s.build(cfg, num_classes, feat_dim), float(s.weight(cfg)))
                      for s in specs})
