"""Losses and small network modules: the criterion, metric losses, pooling."""
from layers.criterion import HEAD_TERMS, LOSS_TERMS, Criterion, LossBatch, LossSpec, build_criterion
from layers.metric import CenterLoss, batch_hard_triplet, mining_masks
from layers.pooling import GeneralizedMeanPooling, GlobalAvgPooling

__all__ = [
    "HEAD_TERMS", "LOSS_TERMS", "CenterLoss", "Criterion", "GeneralizedMeanPooling",
    "GlobalAvgPooling", "LossBatch", "LossSpec", "batch_hard_triplet", "build_criterion",
    "mining_masks",
]
