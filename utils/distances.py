"""Every distance of the project: between a batch's features (losses), between query
and gallery features (evaluation, re-ranking, pictures).

One name, one meaning (``METRICS``): ``euclidean`` is the plain Euclidean distance,
``sqeuclidean`` its square, ``cosine`` is 1 - cosine similarity and ``dot`` minus
the inner product. Rankings by ``euclidean`` and ``sqeuclidean`` are the same; the
values differ where they are used as values (k-reciprocal re-ranking, histograms).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

METRICS = ("sqeuclidean", "euclidean", "cosine", "dot")
# Squared distances are clamped here before a square root, so that coincident points
# (the diagonal, duplicate images) give a zero gradient instead of NaN.
_EPS = 1e-12


def pairwise_distance(x: torch.Tensor, y: torch.Tensor | None = None,
                      metric: str = "euclidean") -> torch.Tensor:
    """Differentiable float32 distances between the rows of ``x`` and ``y`` (losses).

    ``euclidean`` is ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))``; ``sqeuclidean`` the
    same without the root (clamped at 0); ``cosine`` ``max(1 - cos, 0)``; ``dot``
    ``-a.b``.

    Args:
        x: (M, D) features.
        y: (N, D) features; None = ``x``.
        metric: a name of :data:`METRICS`.

    Returns:
        (M, N) float32 distances.
    """
    x = x.float()
    same = y is None  # one set: its squared norms are computed once and shared
    y = x if same else y.float()
    if metric == "cosine":
        return (1.0 - F.normalize(x, dim=1) @ F.normalize(y, dim=1).t()).clamp(min=0.0)
    if metric == "dot":
        return -(x @ y.t())
    if metric not in METRICS:
        raise ValueError(f"unknown distance {metric!r}; expected one of {', '.join(METRICS)}")
    sq_x = x.pow(2).sum(dim=1)
    sq_y = sq_x if same else y.pow(2).sum(dim=1)
    d2 = sq_x[:, None] + sq_y[None, :] - 2.0 * (x @ y.t())
    if metric == "sqeuclidean":
        return d2.clamp(min=0.0)
    return d2.clamp(min=_EPS).sqrt()


def feature_distance(x: torch.Tensor, y: torch.Tensor, metric: str = "sqeuclidean",
                     normalize: bool = True) -> torch.Tensor:
    """Distances between two feature sets (smaller is closer).

    Args:
        x: (M, D) features; y: (N, D) features.
        metric: a name of :data:`METRICS`.
        normalize: L2-normalise the features first (TEST.NORM).

    Returns:
        (M, N) float32 distances on ``x``'s device.
    """
    return FeatureDistances(x, y, metric, normalize)[:]


class FeatureDistances:
    """A (Q, G) distance matrix computed a block of query rows at a time.

    :func:`evaluate_ranking` reads it chunk by chunk, so the whole Q x G matrix
    never exists; it lives on the features' device. L2 normalisation is applied
    to the inner products through the features' inverse norms (computed once),
    so no normalised copy of the features is made either.

    Args:
        q_feat: (Q, D) query features; g_feat: (G, D) gallery features.
        metric, normalize: as in :func:`feature_distance`.
    """

    def __init__(self, q_feat: torch.Tensor, g_feat: torch.Tensor, metric: str = "sqeuclidean",
                 normalize: bool = True) -> None:
        if metric not in METRICS:
            raise ValueError(f"unknown distance {metric!r}: expected one of {', '.join(METRICS)}")
        # float32, or float64 features kept as they are (the distance pictures' numpy input).
        dtype = torch.float64 if q_feat.dtype == torch.float64 else torch.float32
        self.q_feat, self.metric = q_feat.to(dtype), metric
        self.g_feat = g_feat.to(q_feat.device, dtype)
        self.shape = (q_feat.shape[0], g_feat.shape[0])
        self.device = q_feat.device
        # Squared norms of the features as compared, and the scale that normalises them
        # (as F.normalize: divided by max(norm, 1e-12)).
        self.q_sq, self.q_scale = self._norms(self.q_feat, normalize or metric == "cosine")
        self.g_sq, self.g_scale = self._norms(self.g_feat, normalize or metric == "cosine")

    @staticmethod
    def _norms(feat: torch.Tensor, unit: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        sq = feat.pow(2).sum(1)
        if not unit:
            return sq, None
        scale = 1.0 / sq.sqrt().clamp(min=1e-12)
        return sq * scale * scale, scale

    def __getitem__(self, rows: slice) -> torch.Tensor:
        prod = self.q_feat[rows] @ self.g_feat.t()
        if self.q_scale is not None:
            prod.mul_(self.q_scale[rows, None]).mul_(self.g_scale[None])
        if self.metric == "dot":
            return prod.neg_()
        if self.metric == "cosine":
            return prod.neg_().add_(1.0)
        squared = prod.mul_(-2.0).add_(self.q_sq[rows, None]).add_(self.g_sq[None]).clamp_(min=0)
        return squared if self.metric == "sqeuclidean" else squared.sqrt_()

    def full(self) -> torch.Tensor:
        """The whole (Q, G) matrix (re-ranking needs it)."""
        return self[:]
