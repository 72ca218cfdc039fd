"""The re-ID network: (partly) modality-specific ResNet, pooling, BNNeck, ID heads."""
from __future__ import annotations

import copy
from collections import OrderedDict

import torch
from torch import nn

from layers.non_local import NonLocalBlock
from modeling.backbone import STAGES
from utils.constants import INFRARED, VISIBLE


def init_kaiming(module: nn.Module) -> None:
    """reid-strong-baseline's init: Linear kaiming fan_out, BatchNorm weight 1 bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight, a=0, mode="fan_out")
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d) and module.affine:
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_classifier(module: nn.Module) -> None:
    """reid-strong-baseline's classifier init: normal(0, 0.001), bias 0."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.001)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class ModalityHeads(nn.Module):
    """Two training-only ID heads, BN(D) -> FC(D -> H) -> FC(H -> C), one per modality."""

    def __init__(self, feat_dim: int, hidden: int, num_classes: int) -> None:
        super().__init__()

        def head() -> nn.Sequential:
            return nn.Sequential(nn.BatchNorm1d(feat_dim), nn.Linear(feat_dim, hidden),
                                 nn.Linear(hidden, num_classes))

        self.visible = head()
        self.infrared = head()
        self.apply(init_kaiming)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) -> (2, B, C): [visible head, infrared head] on every image."""
        return torch.stack([self.visible(x), self.infrared(x)])


class VIReIDNet(nn.Module):
    """Visible-infrared re-ID network.

    The first ``shared_from`` stages (stem, layer1, ...) exist once per modality
    (``visible``, ``infrared``: identical copies at construction); the rest
    (``shared``) sees every image. Each image goes through its own modality's
    stages in one forward pass: the batch is split by the ``modality`` tensor,
    never by position, and re-assembled in the original order.

    Args:
        stages: the five STAGES modules (from ``modeling.stages.build_stages``).
        shared_from: number of leading modality-specific stages (0..4).
        feat_dim: D, channels of the last stage.
        num_classes: C, training identities.
        pool: (B, D, H, W) -> (B, D) pooling module.
        fc_bias: bias in the ID classifier.
        head_dim: hidden width of the modality heads; None = no heads.
        test_feat: ``bn`` (post-BNNeck) or ``pool`` (pre-BN) feature in eval mode.
    """

    def __init__(self, stages: dict[str, nn.Module], shared_from: int, feat_dim: int,
                 num_classes: int, pool: nn.Module, fc_bias: bool, head_dim: int | None,
                 test_feat: str) -> None:
        super().__init__()
        names = list(STAGES)
        specific = OrderedDict((n, stages[n]) for n in names[:shared_from])
        self.visible = nn.Sequential(specific) if specific else None
        self.infrared = copy.deepcopy(self.visible) if specific else None
        self.shared = nn.Sequential(OrderedDict((n, stages[n]) for n in names[shared_from:]))
        self.pool = pool
        self.neck = nn.BatchNorm1d(feat_dim)
        self.neck.apply(init_kaiming)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift
        self.classifier = nn.Linear(feat_dim, num_classes, bias=fc_bias)
        # A biased classifier follows the source design's kaiming init.
        self.classifier.apply(init_kaiming if fc_bias else init_classifier)
        self.heads = ModalityHeads(feat_dim, head_dim, num_classes) if head_dim else None
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.shared_from = shared_from
        self.test_feat = test_feat

    def _specific(self, img: torch.Tensor, modality: torch.Tensor) -> torch.Tensor:
        """Run each image through its own modality's stages; keeps the batch order."""
        if modality.shape != img.shape[:1]:
            raise ValueError(f"modality has shape {tuple(modality.shape)}; "
                             f"expected ({img.shape[0]},) for the images")
        vis_idx = torch.nonzero(modality == VISIBLE).squeeze(1)
        ir_idx = torch.nonzero(modality == INFRARED).squeeze(1)
        if vis_idx.numel() + ir_idx.numel() != img.shape[0]:
            raise ValueError(f"modality ids must be {VISIBLE} (visible) or {INFRARED} (infrared)")
        if ir_idx.numel() == 0:
            return self.visible(img)
        if vis_idx.numel() == 0:
            return self.infrared(img)
        x = torch.cat([self.visible(img.index_select(0, vis_idx)),
                       self.infrared(img.index_select(0, ir_idx))])
        x = x.index_select(0, torch.argsort(torch.cat([vis_idx, ir_idx])))
        if img.is_contiguous(memory_format=torch.channels_last):
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def forward(self, img: torch.Tensor,
                modality: torch.Tensor) -> dict[str, torch.Tensor] | torch.Tensor:
        """Args: img (B, 3, H, W); modality (B,) long, 0 visible / 1 infrared.

        Returns:
            train mode: ``{'feat': (B, D) pooled, 'bn_feat': (B, D), 'logits': (B, C)}``
            plus ``'head_logits': (2, B, C)`` when the modality heads exist.
            eval mode: the (B, D) feature chosen by TEST.FEAT, not normalised.
        """
        x = self._specific(img, modality) if self.visible is not None else img
        feat = self.pool(self.shared(x))
        bn_feat = self.neck(feat)
        if not self.training:
            return bn_feat if self.test_feat == "bn" else feat
        out = {"feat": feat, "bn_feat": bn_feat, "logits": self.classifier(bn_feat)}
        if self.heads is not None:
            # The source design feeds its heads the BNNeck feature.
            out["head_logits"] = self.heads(bn_feat)
        return out

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by learning-rate group, each parameter in exactly one.

        ``backbone``: the ResNet layers (every stream's copy); ``new``: non-local
        blocks, pooling, BNNeck, classifier; ``head``: the modality heads.
        """
        non_local = {id(p) for m in self.modules() if isinstance(m, NonLocalBlock)
                     for p in m.parameters()}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {"backbone": [], "new": [], "head": []}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            if name.startswith("heads."):
                groups["head"].append((name, param))
            elif id(param) in non_local or not name.startswith(("visible.", "infrared.",
                                                                "shared.")):
                groups["new"].append((name, param))
            else:
                groups["backbone"].append((name, param))
        return groups

    def backbone_parameters(self) -> list[nn.Parameter]:
        """The ResNet parameters (learning rate TRAIN.BASE_LR)."""
        return [p for _, p in self.named_parameter_groups()["backbone"]]

    def new_parameters(self) -> list[nn.Parameter]:
        """Non-local, pooling, BNNeck and classifier parameters (x TRAIN.NEW_LR_FACTOR)."""
        return [p for _, p in self.named_parameter_groups()["new"]]

    def head_parameters(self) -> list[nn.Parameter]:
        """Modality-head parameters (x TRAIN.HEAD_LR_FACTOR); empty without heads."""
        return [p for _, p in self.named_parameter_groups()["head"]]
