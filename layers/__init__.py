"""Losses and small network modules (pooling, non-local blocks, DEEN's DEE and MFA)."""
from layers.criterion import HEAD_TERMS, LOSS_TERMS, Criterion, build_criterion
from layers.dee import DiverseEmbeddingExpansion
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
from layers.mfa import MFA
from layers.non_local import NonLocalBlock
from layers.pooling import GeneralizedMeanPooling, GlobalAvgPooling

__all__ = [
    "HEAD_TERMS", "LOSS_TERMS", "MFA", "CenterLoss", "Criterion", "DiverseEmbeddingExpansion",
    "GeneralizedMeanPooling", "GlobalAvgPooling", "NonLocalBlock", "adaptive_triplet_adp",
    "batch_hard_triplet", "build_criterion", "center_guided_pair_mining", "mining_masks",
    "orthogonality_loss", "batch_distance", "weighted_regularized_triplet",
    "weighted_regularized_triplet_published",
]
