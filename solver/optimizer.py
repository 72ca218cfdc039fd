"""Optimizer with learning-rate groups: backbone, new layers, modality heads."""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from utils.errors import UserError
from utils.registry import Registry

# TRAIN.OPTIMIZER name -> builder(cfg, param_groups).
OPTIMIZERS: Registry = Registry("TRAIN.OPTIMIZER", "optimizer")

# Learning-rate group (a module's ``lr_group``) -> its multiple of TRAIN.BASE_LR; in
# this order in the optimizer. A method may register a group of its own.
LR_GROUPS: Registry = Registry("learning-rate group", "learning-rate group", config_keys=())
LR_GROUPS.update({
    "backbone": lambda cfg: 1.0,
    "inserted": lambda cfg: 1.0 if cfg.TRAIN.INSERTED_LR == "backbone"
    else cfg.TRAIN.NEW_LR_FACTOR,
    "new": lambda cfg: cfg.TRAIN.NEW_LR_FACTOR,
    "head": lambda cfg: cfg.TRAIN.HEAD_LR_FACTOR,
    "criterion": lambda cfg: cfg.TRAIN.NEW_LR_FACTOR,
})


@OPTIMIZERS.register("sgd")
def _sgd(cfg: CfgNode, groups: list[dict]) -> torch.optim.Optimizer:
    if cfg.TRAIN.NESTEROV and cfg.TRAIN.MOMENTUM <= 0:
        raise UserError("TRAIN.NESTEROV = yes needs TRAIN.MOMENTUM > 0")
    return torch.optim.SGD(groups, lr=cfg.TRAIN.BASE_LR, momentum=cfg.TRAIN.MOMENTUM,
                           nesterov=cfg.TRAIN.NESTEROV)


@OPTIMIZERS.register("adam")
def _adam(cfg: CfgNode, groups: list[dict]) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.TRAIN.BASE_LR, betas=(cfg.TRAIN.MOMENTUM, 0.999))


@OPTIMIZERS.register("adamw")
def _adamw(cfg: CfgNode, groups: list[dict]) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.TRAIN.BASE_LR, betas=(cfg.TRAIN.MOMENTUM, 0.999))


def _param_groups(cfg: CfgNode, model: nn.Module, criterion: nn.Module) -> list[dict]:
    named = model.named_parameter_groups()
    trainable_criterion = [(n, p) for n, p in criterion.named_parameters() if p.requires_grad]
    if trainable_criterion:
        named = {**named, "criterion": trainable_criterion}
    for group, params in named.items():
        if group not in LR_GROUPS:
            raise UserError(f"parameter {params[0][0]} is in learning-rate group {group!r}, "
                            f"which is not registered; valid groups: {', '.join(LR_GROUPS)}")
    groups = []
    for group in sorted(named, key=list(LR_GROUPS).index):
        params = named[group]
        lr = cfg.TRAIN.BASE_LR * LR_GROUPS[group](cfg)
        # Weights decay at WEIGHT_DECAY; biases, norm scales and GeM's p (all 1-d)
        # at WEIGHT_DECAY_BIAS.
        weights = [p for _, p in params if p.ndim > 1]
        others = [p for _, p in params if p.ndim <= 1]
        if weights:
            groups.append({"name": group, "params": weights, "lr": lr,
                           "weight_decay": cfg.TRAIN.WEIGHT_DECAY})
        if others:
            groups.append({"name": f"{group}_bias", "params": others, "lr": lr,
                           "weight_decay": cfg.TRAIN.WEIGHT_DECAY_BIAS})
    return groups


def build_optimizer(cfg: CfgNode, model: nn.Module, criterion: nn.Module) -> torch.optim.Optimizer:
    """Build TRAIN.OPTIMIZER over the model's (and criterion's) trainable parameters.

    Groups (named in each group's ``'name'``, rates in ``LR_GROUPS``): ``backbone`` at
    TRAIN.BASE_LR, ``inserted`` (the methods' inserted modules) at the rate
    TRAIN.INSERTED_LR names, ``new`` (pooling, BNNeck, classifier) at BASE_LR x
    NEW_LR_FACTOR, ``head`` (modality heads) at BASE_LR x HEAD_LR_FACTOR; each split into
    weights (WEIGHT_DECAY) and ``*_bias`` (biases and norm parameters,
    WEIGHT_DECAY_BIAS). Center-loss centres are not optimizer parameters (they
    follow their own update rule, see ``layers.metric.CenterLoss``); any other
    trainable criterion parameter goes to a ``criterion`` group at the new-layer rate.

    Args:
        model: a ``modeling.VIReIDNet`` (needs ``named_parameter_groups()``).
        criterion: the ``layers.Criterion``.

    Raises:
        UserError: an unknown optimizer, NESTEROV without momentum, or a parameter
            group no entry of ``LR_GROUPS`` names.
    """
    return OPTIMIZERS[cfg.TRAIN.OPTIMIZER](cfg, _param_groups(cfg, model, criterion))
