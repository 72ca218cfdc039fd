"""Losses and small network modules (pooling, non-local blocks)."""
from layers.criterion import HEAD_TERMS, LOSS_TERMS, Criterion, build_criterion
from layers.metric import (
    CenterLoss,
    batch_hard_triplet,
    mining_masks,
    pairwise_distance,
    weighted_regularized_triplet,
)
from layers.non_local import NonLocalBlock
from layers.pooling import GeneralizedMeanPooling, GlobalAvgPooling

__all__ = [
    "HEAD_TERMS", "LOSS_TERMS", "CenterLoss", "Criterion", "GeneralizedMeanPooling",
    "GlobalAvgPooling", "NonLocalBlock", "batch_hard_triplet", "build_criterion",
    "mining_masks", "pairwise_distance", "weighted_regularized_triplet",
]
