"""DEEN (Zhang & Wang, "Diverse Embedding Expansion Network and Low-Light
Cross-Modality Benchmark for Visible-Infrared Person Re-identification", CVPR 2023;
public code ZYK100/LLCM, DEEN/): MFA blocks, the diverse embedding expansion, the CPM
and orthogonality losses, with the config section ``[DEEN]``.

``configs/deen/deen.ini`` is the recipe; ``modules`` holds the network's modules and
``losses`` the loss functions.
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from layers.criterion import LOSS_TERMS, LossBatch, LossSpec, Outputs
from modeling.backbone import Backbone
from modeling.methods.deen.losses import center_guided_pair_mining, orthogonality_loss
from modeling.methods.deen.modules import MFA, DiverseEmbeddingExpansion
from modeling.stages import INSERTIONS, Insertion, StageContext
from utils.config import Key, add_config_section, format_value
from utils.errors import UserError


def _check(cfg: CfgNode, where: str) -> None:
    d, last = cfg.DEEN, cfg.MODEL.LAST_STAGE
    if len(d.MFA) != 4 or set(d.MFA) - {0, 1} or any(d.MFA[last:]):
        raise UserError(f"{where}: DEEN.MFA = {format_value(d.MFA)} must be 4 flags 0 or 1 "
                        f"(layer1..layer4), none after layer{last} (MODEL.LAST_STAGE)")
    first = max(cfg.MODEL.SHARED_FROM, 1)
    if d.BRANCHES and not first <= d.AFTER <= last:
        raise UserError(f"{where}: DEEN.AFTER = {d.AFTER} must be a shared stage: "
                        f"{first}..{last} (MODEL.SHARED_FROM = {cfg.MODEL.SHARED_FROM}, "
                        f"MODEL.LAST_STAGE = {last})")


add_config_section("DEEN", "DEEN's MFA blocks, diverse embedding expansion, CPM and "
                   "orthogonality losses", [
    Key("BRANCHES", 0, "Diverse embedding expansion: generator branches (0 = none). The "
        "expanded embeddings are stacked on the batch axis, also at test time.",
        range=(0, None), network=True),
    Key("AFTER", 3, "Stage (1..4 = layer1..layer4) after which the expansion sits; it must "
        "be in the shared part (>= MODEL.SHARED_FROM). DEEN: 3 (SYSU-MM01, LLCM), 2 (RegDB).",
        range=(1, 4), network=True),
    Key("MFA", (0, 0, 0, 0), "Multi-level feature aggregation block after layer1..layer4 "
        "(1 = yes): a channel then a spatial non-local part fed the stage's input and output. "
        "DEEN: 1, 1, 1, 0 (RegDB: 1, 1, 0, 0).", network=True),
    Key("MFA_SOFTMAX", False, "MFA affinity: no = divided by its size (DEEN's code), yes = "
        "softmax (DEEN's paper, Eq. 7).", network=True),
    Key("CPM_WEIGHT", 0.8, "Weight of the centre-guided pair mining loss (LOSS.TERMS cpm; "
        "summed over the expanded embeddings, each against the originals).", range=(0, None)),
    Key("CPM_MARGIN", 0.2, "CPM margin.", range=(0, None)),
    Key("CPM_DETACH", True, "CPM: detach the push away from the own modality's centre "
        "(DEEN's code: yes; its paper: no)."),
    Key("ORTH_WEIGHT", 0.01, "Weight of the orthogonality loss between the expanded "
        "embeddings (LOSS.TERMS orth; its code: 0.01; its paper: 0.1).", range=(0, None)),
], owner=__name__, check=_check, renames={
    "MODEL.DEE_BRANCHES": "BRANCHES", "MODEL.DEE_AFTER": "AFTER", "MODEL.MFA": "MFA",
    "MODEL.MFA_SOFTMAX": "MFA_SOFTMAX", "LOSS.CPM_WEIGHT": "CPM_WEIGHT",
    "LOSS.CPM_MARGIN": "CPM_MARGIN", "LOSS.CPM_DETACH": "CPM_DETACH",
    "LOSS.ORTH_WEIGHT": "ORTH_WEIGHT"})


def _mfa(cfg: CfgNode, stage: int, backbone: Backbone) -> nn.Module | None:
    if not cfg.DEEN.MFA[stage - 1]:
        return None
    return MFA(backbone.channels[stage], backbone.channels[stage - 1],
               backbone.strides[stage], cfg.DEEN.MFA_SOFTMAX)


def _call_mfa(module: nn.Module, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return module(x, ctx.input)  # fed the stage's output and its input


def _dee(cfg: CfgNode, stage: int, backbone: Backbone) -> nn.Module | None:
    if not cfg.DEEN.BRANCHES or stage != cfg.DEEN.AFTER:
        return None
    width = backbone.channels[stage]
    if width % 4:
        raise UserError(f"DEEN.AFTER = {stage}: the expansion splits layer{stage}'s {width} "
                        "channels in four; they must be a multiple of 4")
    return DiverseEmbeddingExpansion(width, cfg.DEEN.BRANCHES)


INSERTIONS["mfa"] = Insertion(_mfa, attr="mfa", call=_call_mfa, order=20)
INSERTIONS["dee"] = Insertion(_dee, attr="dee", order=30)


def _views(outputs: Outputs) -> list[torch.Tensor]:
    """The pooled features of each embedding view: [original, branch 1, ...], (B, D) each."""
    return list(outputs["feat"].float().chunk(int(outputs.get("views", 1))))


class CPMTerm(nn.Module):
    """DEEN's centre-guided pair mining: every expanded view against the originals, summed."""

    def __init__(self, margin: float, detach_own: bool) -> None:
        super().__init__()
        self.margin, self.detach_own = margin, detach_own

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        original, *expanded = _views(outputs)
        b = original.shape[0]
        return torch.stack([center_guided_pair_mining(original, e, batch.pid[:b],
                                                      batch.modality[:b], self.margin,
                                                      self.detach_own)
                            for e in expanded]).sum()


class OrthogonalityTerm(nn.Module):
    """DEEN's orthogonality of the expanded views' pooled features, over every pair of them."""

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        _, *expanded = _views(outputs)
        views = len(expanded) + 1
        pairs = [orthogonality_loss(a, b, views) for i, a in enumerate(expanded)
                 for b in expanded[i + 1:]]
        return torch.stack(pairs).sum() if pairs else outputs["feat"].sum() * 0.0


def _need_views(cfg: CfgNode, term: str, branches: int) -> None:
    if cfg.DEEN.BRANCHES < branches:
        raise UserError(f"LOSS.TERMS has {term}, which needs expanded embeddings: "
                        f"DEEN.BRANCHES >= {branches} (it is {cfg.DEEN.BRANCHES})")


def _cpm(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    _need_views(cfg, "cpm", 1)
    return CPMTerm(cfg.DEEN.CPM_MARGIN, cfg.DEEN.CPM_DETACH)


def _orth(cfg: CfgNode, num_classes: int, feat_dim: int) -> nn.Module:
    _need_views(cfg, "orth", 2)
    return OrthogonalityTerm()


LOSS_TERMS["cpm"] = LossSpec("loss_cpm", _cpm, lambda cfg: cfg.DEEN.CPM_WEIGHT)
LOSS_TERMS["orth"] = LossSpec("loss_orth", _orth, lambda cfg: cfg.DEEN.ORTH_WEIGHT)
