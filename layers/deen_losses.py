"""DEEN's centre-guided pair mining and orthogonality losses, and the published
adaptive-weight triplets of CAJ (ADP) and AGW (WRT).

Modality labels: 0 = visible, 1 = infrared. Distances are Euclidean and computed
in float32 as ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))``, so coincident points
give a zero gradient instead of NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_EPS = 1e-12
# Added to the normaliser of the published adaptive weights.
_WEIGHT_EPS = 1e-6


def _euclidean(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N) Euclidean distances."""
    d2 = a.pow(2).sum(1)[:, None] + b.pow(2).sum(1)[None, :] - 2.0 * (a @ b.t())
    return d2.clamp(min=_EPS).sqrt()


def _group_means(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x (B, D), groups (K, B) bool with no empty row -> (K, D) mean of each group."""
    weights = groups.to(x.dtype)
    return (weights @ x) / weights.sum(dim=1, keepdim=True)


def _modality_terms(own: torch.Tensor, other: torch.Tensor, expanded: torch.Tensor,
                    margin: float, detach_own: bool) -> torch.Tensor:
    """CPM of one modality from (K, D) centres: own originals, other originals, own expanded."""
    anchor = _euclidean(other, expanded).diagonal()  # d(c_other^i, e_own^i)
    to_own = _euclidean(own, expanded).diagonal()
    if detach_own:
        to_own = to_own.detach()
    other_ids = ~torch.eye(len(own), dtype=torch.bool, device=own.device)
    nearest_expanded = _euclidean(expanded, expanded).masked_fill(~other_ids, float("inf"))
    nearest_own = _euclidean(own, own).masked_fill(~other_ids, float("inf"))
    return (F.relu(anchor - to_own + margin).mean()
            + 0.5 * F.relu(anchor - nearest_expanded.amin(dim=1) + margin).mean()
            + 0.5 * F.relu(anchor - nearest_own.amin(dim=1) + margin).mean())


def center_guided_pair_mining(feat: torch.Tensor, feat_exp: torch.Tensor, pid: torch.Tensor,
                              modality: torch.Tensor, margin: float = 0.2,
                              detach_own: bool = True) -> torch.Tensor:
    """DEEN's centre-guided pair mining (CPM) loss, in the form of its published code.

    Centres are means per identity and modality, grouped by label: c_V, c_I from
    ``feat`` and e_V, e_I from ``feat_exp``. With d Euclidean, [z]+ = max(z, 0),
    i over the identities and j != i::

        L_V = mean_i [d(c_I^i, e_V^i) - d(c_V^i, e_V^i) + m]+
              + 1/2 mean_i [d(c_I^i, e_V^i) - min_j d(e_V^i, e_V^j) + m]+
              + 1/2 mean_i [d(c_I^i, e_V^i) - min_j d(c_V^i, c_V^j) + m]+

    L_I swaps V and I; the loss is (L_V + L_I) / 2. Only identities with images
    of both modalities take part; with fewer than two of them the loss is 0
    (still attached to the graph).

    Args:
        feat: (B, D) original embeddings.
        feat_exp: (B, D) expanded embeddings of the same images, in the same order.
        pid: (B,) identity labels.
        modality: (B,) 0 = visible, 1 = infrared.
        margin: m.
        detach_own: stop the gradient of d(c_V, e_V) (resp. d(c_I, e_I)), as the
            published code does; False lets it pull the expansion away from its
            own-modality centre as well.

    Returns:
        scalar loss.
    """
    if feat.shape != feat_exp.shape or feat.ndim != 2 or len(pid) != len(feat) or len(
            modality) != len(feat):
        raise ValueError(f"CPM expects feat and feat_exp (B, D) with pid, modality (B,); got "
                         f"{tuple(feat.shape)}, {tuple(feat_exp.shape)}, {tuple(pid.shape)}, "
                         f"{tuple(modality.shape)}")
    feat, feat_exp = feat.float(), feat_exp.float()
    same_id = pid[None, :] == torch.unique(pid)[:, None]  # (K, B)
    visible = same_id & (modality == 0)[None, :]
    infrared = same_id & (modality == 1)[None, :]
    both = visible.any(dim=1) & infrared.any(dim=1)
    if int(both.sum()) < 2:
        return (feat.sum() + feat_exp.sum()) * 0.0
    visible, infrared = visible[both], infrared[both]
    c_v, c_i = _group_means(feat, visible), _group_means(feat, infrared)
    e_v, e_i = _group_means(feat_exp, visible), _group_means(feat_exp, infrared)
    loss_v = _modality_terms(c_v, c_i, e_v, margin, detach_own)
    loss_i = _modality_terms(c_i, c_v, e_i, margin, detach_own)
    return (loss_v + loss_i) / 2


def orthogonality_loss(p1: torch.Tensor, p2: torch.Tensor, views: int = 3) -> torch.Tensor:
    """DEEN's orthogonality loss between two expanded embeddings of the same images.

    ``sum_b <p1_b, p2_b> / (views * B)``: the published code divides by the total
    number of embeddings in the batch (original plus expanded, views * B), not by B.

    Args:
        p1, p2: (B, D) pooled features of the first and second expansion.
        views: embeddings per image (1 original + the expansions).
    """
    if p1.shape != p2.shape or p1.ndim != 2:
        raise ValueError(f"orthogonality expects two (B, D) tensors of one shape, got "
                         f"{tuple(p1.shape)} and {tuple(p2.shape)}")
    return (p1.float() * p2.float()).sum() / (views * p1.shape[0])


def _published_softmax_weights(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Row weights ``exp(s - max) * mask / (sum exp(s - max) * mask + 1e-6)``.

    As published, the max is taken over ``scores * mask``, whose unmasked entries
    are 0: for non-positive scores (negatives, scored -d) the shift is 0, so
    nothing is shifted, the exponentials of far negatives underflow and the
    1e-6 dominates the normaliser (weights summing to well below 1 once every
    negative is beyond about 14 / alpha).
    """
    shift = (scores * mask).amax(dim=1, keepdim=True)
    exp = torch.exp(scores - shift) * mask
    return exp / (exp.sum(dim=1, keepdim=True) + _WEIGHT_EPS)


def _published_weighted_distances(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                                  alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor soft-max positive and soft-min negative distances, as published."""
    dist = dist.float()
    pos, neg = pos.to(dist.dtype), neg.to(dist.dtype)
    dist_pos, dist_neg = dist * pos, dist * neg
    far_pos = (dist_pos * _published_softmax_weights(dist_pos * alpha, pos)).sum(dim=1)
    close_neg = (dist_neg * _published_softmax_weights(-dist_neg * alpha, neg)).sum(dim=1)
    return far_pos, close_neg


def _soft_margin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``mean log(1 + exp(-y x))`` (SoftMarginLoss), evaluated as a softplus: the same
    values where the direct formula is finite, and finite where it overflows."""
    return F.softplus(-y * x).mean()


def adaptive_triplet_adp(dist: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                         alpha: float = 1.0, gamma: float = 1.0,
                         square: bool = True) -> torch.Tensor:
    """CAJ's adaptive-weight triplet (ADP), as in its published code.

    Per anchor, ``p`` = positives' distances weighted by the published softmax of
    ``alpha * d`` and ``n`` = negatives' distances weighted by that of
    ``-alpha * d`` (see ``_published_softmax_weights``). Then, with
    ``softmargin(x, y) = mean log(1 + exp(-y x))``:

    * ``square``: ``softmargin(min(gamma (p - n)^2, 88), y)`` with y = -1 where
      p > n and +1 otherwise (the clamp keeps exp finite in float32);
    * otherwise: ``softmargin(gamma (n - p), 1)``.

    Every anchor counts; one without positives (negatives) gets p = 0 (n = 0).

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks (e.g. from ``layers.metric.mining_masks``).
        alpha: weight temperature.
        gamma: scale of the difference.
        square: the squared-difference form (CAJ's ``square=1``).
    """
    far_pos, close_neg = _published_weighted_distances(dist, pos, neg, alpha)
    if not square:
        return _soft_margin(gamma * (close_neg - far_pos), torch.ones_like(far_pos))
    diff = (gamma * (far_pos - close_neg).pow(2)).clamp(max=88.0)
    violated = (far_pos > close_neg).to(diff.dtype)
    sign = 1.0 - 2.0 * violated  # -1 where p > n: a violation costs log(1 + exp(diff))
    return _soft_margin(diff, sign)


def weighted_regularized_triplet_published(dist: torch.Tensor, pos: torch.Tensor,
                                           neg: torch.Tensor) -> torch.Tensor:
    """AGW's weighted regularized triplet exactly as published (``TripletLoss_WRT``).

    ``mean log(1 + exp(p - n))`` with the published weights: the positives are
    shifted by their max, the negatives are not shifted, and the normaliser has
    +1e-6 (see ``_published_softmax_weights``). Against the exact masked softmax of
    ``layers.metric.weighted_regularized_triplet`` the 1e-6 matters once
    ``sum_n exp(-d_n)`` gets small: with the nearest negatives about 1, 4, 8, 12
    and 15 away, the two losses differ by about 1e-7, 1e-6, 1e-4, 1e-3 and 0.3.
    Beyond about 30 the soft-min negative is ~0, the loss becomes
    ``softplus(p)`` and no longer pushes negatives away. The soft margin is
    evaluated as a softplus: the published ``log(1 + exp(.))`` gives inf (and NaN
    gradients) once ``p - n`` exceeds about 88.7 in float32, as the distances of
    features from random weights do; this stays finite there and equals it
    elsewhere. Every anchor counts, as in ``adaptive_triplet_adp``.

    Args:
        dist: (B, B) distances.
        pos, neg: (B, B) bool masks.
    """
    return adaptive_triplet_adp(dist, pos, neg, alpha=1.0, gamma=1.0, square=False)
