"""MSCMNet (Hua et al., "MSCMNet: Multi-scale Semantic Correlation Mining for
Visible-Infrared Person Re-Identification", Pattern Recognition 2024; public code
Hua-XC/MSCMNet): four stems, the attention chain between layer3 and layer4, the
quadruple centre triplet loss (QCT) and the four augmentation pipelines, with the
config section ``[MSCMNET]``.

The rest of its network is AGW's (``modeling.methods.agw``: non-local blocks, here
of inner width C/2; GeM p = 3 fixed; BNNeck); ``configs/mscmnet/mscmnet.ini`` is the
recipe. ``parts`` holds the network's modules and the loss, ``augment`` the
pipelines' operations; this module registers them:

- ``MSCMNET.FOUR_STEMS``: the front ``four_stems`` (``modeling.stages.FRONTS``);
- ``MSCMNET.ATTENTION``: the chain after layer3 (``modeling.stages.INSERTIONS``);
- ``qct`` in LOSS.TERMS (``layers.criterion.LOSS_TERMS``);
- channel rules ``green_or_gray``, ``channel_scale`` and pixel rules ``grayscale``,
  ``brightness`` (``data.transforms.CHANNEL_RULES``, ``PIXEL_RULES``).
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from data.transforms import CHANNEL_RULES, PIXEL_RULES, MatrixRule
from layers.criterion import LOSS_TERMS, LossBatch, LossSpec, Outputs
from modeling.backbone import Backbone
from modeling.methods.mscmnet.augment import (
    channel_scale,
    green_or_gray,
    random_brightness,
    random_grayscale,
)
from modeling.methods.mscmnet.parts import (
    FourStemFront,
    MultiScaleAttentionChain,
    quad_center_triplet,
)
from modeling.stages import FRONTS, INSERTIONS, Front, Insertion, StageContext
from utils.config import Key, add_config_section, format_value
from utils.errors import UserError

# The chain sits after layer3 and reads the stem, layer1 and layer2 outputs.
CHAIN_STAGE = 3


def _check(cfg: CfgNode, where: str) -> None:
    m, model = cfg.MSCMNET, cfg.MODEL
    if m.FOUR_STEMS and model.SHARED_FROM != 1:
        raise UserError(f"{where}: MSCMNET.FOUR_STEMS replaces the modality-specific stem: "
                        f"it needs MODEL.SHARED_FROM = 1 (it is {model.SHARED_FROM})")
    if not m.ATTENTION:
        return
    if model.SHARED_FROM > 1 or model.LAST_STAGE < CHAIN_STAGE:
        raise UserError(f"{where}: MSCMNET.ATTENTION reads the stem, layer1 and layer2 maps "
                        "and runs after layer3: it needs MODEL.SHARED_FROM 0 or 1 and "
                        f"MODEL.LAST_STAGE >= 3 (they are {model.SHARED_FROM} and "
                        f"{model.LAST_STAGE})")
    if tuple(cfg.DATA.SIZE_TEST) != tuple(cfg.DATA.SIZE_TRAIN):
        raise UserError(f"{where}: DATA.SIZE_TEST = {format_value(cfg.DATA.SIZE_TEST)} differs "
                        f"from DATA.SIZE_TRAIN = {format_value(cfg.DATA.SIZE_TRAIN)}: "
                        "MSCMNET.ATTENTION's blocks are built for one map size")


add_config_section("MSCMNET", "MSCMNet's four stems, attention chain and QCT loss", [
    Key("FOUR_STEMS", False, "Two stems per modality (needs MODEL.SHARED_FROM 1): in "
        "training the sampled image (part 0) goes through the modality's main stem and its "
        "copy (part 1, DATA.VISIBLE_COPY / INFRARED_COPY) through the second; at test each "
        "image goes through both and the outputs are averaged.", network=True),
    Key("ATTENTION", False, "The four channel-token attention blocks between layer3 and "
        "layer4, fed the stem, layer1 and layer2 maps; built for DATA.SIZE_TRAIN (= "
        "DATA.SIZE_TEST), whose layer3 map must be a quarter of the stem's and half of "
        "layer2's in both directions.", network=True),
    Key("HEADS", 32, "Attention heads; they must divide the layer3 map's H x W (published: "
        "32 on 24 x 12 = 288 at 384 x 192).", range=(1, None), network=True),
    Key("QCT_WEIGHT", 1.0, "Weight of the quadruple centre triplet loss (LOSS.TERMS qct).",
        range=(0, None)),
    Key("QCT_MARGIN", 0.7, "QCT: margin of the hinge on the other identities' centres "
        "(published 0.7, hard-coded).", range=(0, None)),
], owner=__name__, check=_check)


def _chain(cfg: CfgNode, stage: int, backbone: Backbone) -> nn.Module | None:
    if not cfg.MSCMNET.ATTENTION or stage != CHAIN_STAGE:
        return None
    return MultiScaleAttentionChain.for_input(tuple(cfg.DATA.SIZE_TRAIN), backbone.channels,
                                              backbone.strides, cfg.MSCMNET.HEADS)


def _call_chain(module: nn.Module, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return module(x, ctx.taps)  # queries and keys from the stem, layer1 and layer2 maps


def _front(cfg: CfgNode, stages: dict[str, nn.Module]) -> nn.Module | None:
    if not cfg.MSCMNET.FOUR_STEMS:
        return None
    front = FourStemFront(stages["stem"])
    front.lr_group = "backbone"
    return front


INSERTIONS["mscmnet_attention"] = Insertion(_chain, attr="attention", call=_call_chain,
                                            order=40)
FRONTS["four_stems"] = Front(_front)


class QCTTerm(nn.Module):
    """QCT (``parts.quad_center_triplet``) on the pooled pre-BN features."""

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, outputs: Outputs, batch: LossBatch) -> torch.Tensor:
        return quad_center_triplet(outputs["feat"], batch.pid, batch.modality, self.margin)


LOSS_TERMS["qct"] = LossSpec("loss_qct", lambda cfg, n, d: QCTTerm(cfg.MSCMNET.QCT_MARGIN),
                             lambda cfg: cfg.MSCMNET.QCT_WEIGHT)

# The pipelines' own operations (augment.STREAMS): ChannelExchange is CAJ's ``exchange``.
CHANNEL_RULES.update({"green_or_gray": MatrixRule(green_or_gray),
                      "channel_scale": MatrixRule(channel_scale)})
PIXEL_RULES.update({"grayscale": random_grayscale, "brightness": random_brightness})
