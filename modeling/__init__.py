"""Model construction: ``build_model(cfg, num_classes)``."""
from __future__ import annotations

from yacs.config import CfgNode

from layers.criterion import HEAD_TERMS
from layers.pooling import GeneralizedMeanPooling, GlobalAvgPooling
from modeling.backbone import BACKBONES, STAGES, Backbone
from modeling.model import EvalFeature, VIReIDNet
from modeling.stages import build_front, build_stages, feature_width
from modeling.warm_start import load_whole_model, read_model_checkpoint
from utils.config import with_values

__all__ = ["BACKBONES", "STAGES", "Backbone", "EvalFeature", "VIReIDNet", "build_model"]


def build_model(cfg: CfgNode, num_classes: int) -> VIReIDNet:
    """Build the network of ``cfg.MODEL`` for ``num_classes`` training identities.

    The modality heads are built when LOSS.TERMS has ``modality_id`` or ``kl``. The
    methods' inserted modules (``modeling.stages.INSERTIONS``) go into the backbone's
    stages; in a modality-specific stage each stream gets its own copy, like the rest
    of that stage.

    MODEL.PRETRAIN_PATH naming one of this project's checkpoints initialises the
    whole network (``modeling.warm_start``); otherwise it is the backbone's.

    Raises:
        UserError: bad MODEL settings, pretrained weights that cannot be loaded, or a
            trainable parameter whose module declares no learning-rate group.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    warm = read_model_checkpoint(cfg.MODEL.PRETRAIN_PATH)
    if warm is not None:
        path = cfg.MODEL.PRETRAIN_PATH
        cfg = with_values(cfg, MODEL__PRETRAIN_PATH="")  # the backbone's come with the rest
    backbone = BACKBONES[cfg.MODEL.NAME](cfg)
    stages = build_stages(cfg, backbone)
    if cfg.MODEL.POOLING == "gem":
        pool = GeneralizedMeanPooling(cfg.MODEL.GEM_P, learnable=cfg.MODEL.GEM_LEARNABLE)
    else:
        pool = GlobalAvgPooling()
    with_heads = any(term in cfg.LOSS.TERMS for term in HEAD_TERMS)
    model = VIReIDNet(stages, cfg.MODEL.SHARED_FROM, feature_width(cfg, backbone),
                      num_classes, pool, fc_bias=cfg.MODEL.FC_BIAS,
                      head_dim=cfg.MODEL.HEAD_DIM if with_heads else None,
                      test_feat=EvalFeature(cfg.TEST.FEAT, cfg.TEST.VIEWS, cfg.TEST.NORM_EACH,
                                            tuple(cfg.TEST.PART_WEIGHTS)),
                      neck_init_std=cfg.MODEL.NECK_INIT_STD,
                      front=build_front(cfg, stages))
    model.named_parameter_groups()  # every trainable parameter in a declared group
    if warm is not None:
        load_whole_model(model, warm, path)
    return model


# The methods register their sections, inserted modules, losses and importers.
import modeling.methods  # noqa: E402, F401
