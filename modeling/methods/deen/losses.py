"""DEEN's centre-guided pair mining (CPM) and orthogonality losses.

Modality labels: 0 = visible, 1 = infrared. Distances are Euclidean, from
``utils.distances.pairwise_distance``: float32 ``sqrt(max(|a|^2 + |b|^2 - 2 a.b, 1e-12))``,
so coincident points give a zero gradient instead of NaN.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.distances import pairwise_distance


def _distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(M, D), (N, D) -> (M, N) Euclidean distances."""
    return pairwise_distance(a, b, "euclidean")


def _group_means(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x (B, D), groups (K, B) bool with no empty row -> (K, D) mean of each group."""
    weights = groups.to(x.dtype)
    return (weights @ x) / weights.sum(dim=1, keepdim=True)


def _modality_terms(own: torch.Tensor, other: torch.Tensor, expanded: torch.Tensor,
                    margin: float, detach_own: bool) -> torch.Tensor:
    """CPM of one modality from (K, D) centres: own originals, other originals, own expanded."""
    anchor = _distance(other, expanded).diagonal()  # d(c_other^i, e_own^i)
    to_own = _distance(own, expanded).diagonal()
    if detach_own:
        to_own = to_own.detach()
    other_ids = ~torch.eye(len(own), dtype=torch.bool, device=own.device)
    nearest_expanded = _distance(expanded, expanded).masked_fill(~other_ids, float("inf"))
    nearest_own = _distance(own, own).masked_fill(~other_ids, float("inf"))
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
