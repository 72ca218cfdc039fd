"""The re-ID network: (partly) modality-specific ResNet, pooling, BNNeck, ID heads."""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modeling.backbone import STAGES
from modeling.stages import StageContext, run_stages
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError


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


@dataclass(frozen=True)
class EvalFeature:
    """What the network returns in eval mode (TEST.FEAT, TEST.VIEWS, TEST.NORM_EACH,
    TEST.PART_WEIGHTS).

    Attributes:
        kind: ``bn`` (post-BNNeck), ``pool`` (pre-BN) or ``pool+bn`` (both, concatenated).
        views: ``all`` embeddings of an expanded network, concatenated, or the ``original``.
        norm_each: L2-normalise every part before concatenating.
        weights: (pooled, BN) weights of ``pool+bn`` parts' inner products: each part is
            multiplied by the square root of its weight.
    """

    kind: str = "bn"
    views: str = "all"
    norm_each: bool = False
    weights: tuple[float, float] = (1.0, 1.0)


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
        test_feat: the eval-mode feature.
        neck_init_std: std of the BNNeck weight's normal init around 1 (0 = ones).
        front: a method's module replacing the per-modality copies of the first
            ``shared_from`` stages (``modeling.stages.FRONTS``): ``front(img, modality,
            part)``; None = the copies.

    Attributes:
        views: embeddings per image: the product of the inserted modules'
            ``views_factor`` (DEEN's expansion: 1 + branches), else 1.
    """

    def __init__(self, stages: dict[str, nn.Module], shared_from: int, feat_dim: int,
                 num_classes: int, pool: nn.Module, fc_bias: bool, head_dim: int | None,
                 test_feat: EvalFeature, neck_init_std: float = 0.0,
                 front: nn.Module | None = None) -> None:
        super().__init__()
        names = list(STAGES)
        if front is not None and not shared_from:
            raise ValueError("a network front replaces modality-specific stages: "
                             "shared_from must be at least 1")
        specific = OrderedDict((n, stages[n]) for n in names[:shared_from])
        if front is not None:
            self.front = front
            specific = OrderedDict()
        self.visible = nn.Sequential(specific) if specific else None
        self.infrared = copy.deepcopy(self.visible) if specific else None
        self.shared = nn.Sequential(OrderedDict((n, stages[n]) for n in names[shared_from:]))
        self.pool = pool
        self.pool.lr_group = "new"
        self.neck = nn.BatchNorm1d(feat_dim)
        self.neck.lr_group = "new"
        self.neck.apply(init_kaiming)
        if neck_init_std:  # AGW's and DEEN's kaiming init draws the BN weight around 1
            nn.init.normal_(self.neck.weight, 1.0, neck_init_std)
        self.neck.bias.requires_grad_(False)  # BNNeck: no shift
        self.classifier = nn.Linear(feat_dim, num_classes, bias=fc_bias)
        # A biased classifier follows the source design's kaiming init.
        self.classifier.apply(init_kaiming if fc_bias else init_classifier)
        self.classifier.lr_group = "new"
        self.heads = ModalityHeads(feat_dim, head_dim, num_classes) if head_dim else None
        if self.heads is not None:
            self.heads.lr_group = "head"
        self.feat_dim = feat_dim
        self.num_classes = num_classes
        self.shared_from = shared_from
        self.test_feat = test_feat
        self.views = math.prod(int(getattr(m, "views_factor", 1)) for m in self.shared.modules())
        self._front_name = names[shared_from - 1] if shared_from else None

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

    def forward(self, img: torch.Tensor, modality: torch.Tensor,
                part: torch.Tensor | None = None) -> dict[str, torch.Tensor | int] | torch.Tensor:
        """Args: img (B, 3, H, W); modality (B,) long, 0 visible / 1 infrared; part (B,)
        long, the batch part of each training image (``data.transforms.PART_PLAIN`` /
        ``PART_COPY``), used only by a method's front (``front``).

        Returns:
            train mode: ``{'feat': (V*B, D) pooled, 'bn_feat': (V*B, D), 'logits': (V*B, C),
            'views': V}`` plus ``'head_logits': (2, V*B, C)`` when the modality heads
            exist; V = 1 unless a stage expands the embeddings, whose rows are then
            [original batch, branch 1, branch 2, ...]. Also every stage's output map by
            stage name (``stem`` .. ``layer4``; of the modality-specific part only its
            last stage, assembled in batch order) and the extra outputs inserted
            modules recorded (``StageContext.record``).
            eval mode: the (B, D') feature of :class:`EvalFeature`.
        """
        ctx = StageContext()
        x = img
        if getattr(self, "front", None) is not None:
            x = self.front(img, modality, part)
            ctx.taps[self._front_name] = x
        elif self.visible is not None:
            x = self._specific(img, modality)
            ctx.taps[self._front_name] = x
        feat = self.pool(run_stages(self.shared, x, ctx))
        bn_feat = self.neck(feat)
        if not self.training:
            return self._test_feature(feat, bn_feat)
        out: dict[str, torch.Tensor | int] = {**ctx.taps, **ctx.extras, "feat": feat,
                                              "bn_feat": bn_feat,
                                              "logits": self.classifier(bn_feat),
                                              "views": self.views}
        if self.heads is not None:
            # The source design feeds its heads the BNNeck feature.
            out["head_logits"] = self.heads(bn_feat)
        return out

    def _test_feature(self, feat: torch.Tensor, bn_feat: torch.Tensor) -> torch.Tensor:
        """(V*B, D) pooled and BN features -> (B, D') per EvalFeature: the chosen kinds of
        the chosen embeddings, each L2-normalised when ``norm_each``, concatenated."""
        spec = self.test_feat
        views = self.views if spec.views == "all" else 1
        kinds = {"bn": (bn_feat,), "pool": (feat,), "pool+bn": (feat, bn_feat)}[spec.kind]
        batch = feat.shape[0] // self.views
        parts = [f[v * batch:(v + 1) * batch] for v in range(views) for f in kinds]
        if spec.norm_each:
            parts = [F.normalize(p, dim=1) for p in parts]
        if spec.kind == "pool+bn" and tuple(spec.weights) != (1.0, 1.0):
            scale = [w ** 0.5 for w in spec.weights] * views
            parts = [p * s for p, s in zip(parts, scale, strict=True)]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def named_parameter_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Trainable parameters by learning-rate group, each parameter in exactly one.

        A parameter belongs to the group its nearest enclosing module declares with an
        ``lr_group`` attribute: ``backbone`` (the backbone's stages, every stream's
        copy), ``new`` (pooling, BNNeck, classifier), ``head`` (the modality heads) and
        whatever the inserted modules declare (``inserted`` for AGW's and DEEN's).

        Raises:
            UserError: a trainable parameter whose modules declare no group.
        """
        declared = {name: module.lr_group for name, module in self.named_modules()
                    if isinstance(getattr(module, "lr_group", None), str)}
        groups: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for name, param in self.named_parameters():
            if not param.requires_grad:
                continue
            parts = name.split(".")[:-1]
            owner = next((".".join(parts[:n]) for n in range(len(parts), -1, -1)
                          if ".".join(parts[:n]) in declared), None)
            if owner is None:
                raise UserError(f"parameter {name} belongs to no learning-rate group: give "
                                "its module an lr_group attribute (backbone, inserted, new, "
                                "head, or a group its method registers)")
            groups.setdefault(declared[owner], []).append((name, param))
        return groups
