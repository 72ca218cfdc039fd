"""k-reciprocal re-ranking (Zhong et al., CVPR 2017), vectorized in torch.

The published algorithm visits every image in Python; here each step works on
a block of rows at a time. Memory: three dense (Q+G) x (Q+G) matrices of the
input's float type (about 560 MB for SYSU-MM01's 3,803 + 3,010 images in
float32) plus per-block temporaries bounded by ``chunk_rows``.
"""
from __future__ import annotations

import torch

from utils.errors import UserError

# Elements per temporary block of the Jaccard step.
_JACCARD_BLOCK = 1 << 24

# Re-ranking holds three dense (Q+G) x (Q+G) matrices: 25,000 images is about
# 7.5 GB in float32, beyond which the evaluation refuses it.
MAX_RERANK_IMAGES = 25_000


def check_rerank_size(num_query: int, num_gallery: int) -> None:
    """Refuse a re-ranking whose dense matrices would not fit.

    Raises:
        UserError: Q + G above MAX_RERANK_IMAGES.
    """
    n = num_query + num_gallery
    if n > MAX_RERANK_IMAGES:
        gb = 3 * n * n * 4 / 1e9
        raise UserError(f"TEST.RERANK: {num_query} queries + {num_gallery} gallery images = {n} "
                        f"exceeds the re-ranking limit of {MAX_RERANK_IMAGES} images (it builds "
                        f"three dense {n} x {n} matrices, {gb:.0f} GB in float32); set "
                        "TEST.RERANK no")


def _reciprocal_mask(rank: torch.Tensor, rows: slice, k: int) -> torch.Tensor:
    """(c, k+1) bool: ``rank[i, a]`` is a k-reciprocal neighbour of ``i``.

    ``j`` is a k-reciprocal neighbour of ``i`` when each is among the other's
    k+1 nearest (both lists include the item itself).
    """
    fwd = rank[rows, :k + 1]
    back = rank[:, :k + 1][fwd]  # (c, k+1, k+1)
    ids = torch.arange(rows.start, rows.stop, device=rank.device)
    return (back == ids[:, None, None]).any(-1)


def _nearest(dist: torch.Tensor, width: int) -> torch.Tensor:
    """(c, width) columns of the ``width`` smallest entries of each row, in the
    order of a stable sort (ties by column), without sorting whole rows."""
    k = min(width + 1, dist.shape[1])
    vals, idx = torch.topk(dist, k, dim=1, largest=False, sorted=False)
    idx, perm = idx.sort(dim=1)
    vals, perm = vals.gather(1, perm).sort(dim=1, stable=True)
    idx = idx.gather(1, perm)
    if k > width:
        # A tie across the cut may have kept a later column than a stable sort would.
        cut = torch.nonzero(vals[:, width] == vals[:, width - 1]).squeeze(1)
        if cut.numel():
            idx[cut] = torch.sort(dist[cut], dim=1, stable=True).indices[:, :k]
    return idx[:, :width]


def k_reciprocal_rerank(q_g: torch.Tensor, q_q: torch.Tensor, g_g: torch.Tensor,
                        k1: int = 20, k2: int = 6, lambda_value: float = 0.3,
                        chunk_rows: int = 512) -> torch.Tensor:
    """Re-rank query-gallery distances with k-reciprocal encoding.

    Distances are normalised by their row maximum over the joint (Q+G) set,
    each image gets a weight vector over its expanded k-reciprocal set
    (``exp(-d)``, normalised), optionally averaged over its ``k2`` nearest
    (query expansion), and the final distance mixes the Jaccard distance of
    those vectors with the original one: ``(1 - lambda) * jaccard + lambda * d``.

    Args:
        q_g: (Q, G) query-gallery distances (non-negative, smaller is closer).
        q_q: (Q, Q) query-query distances.
        g_g: (G, G) gallery-gallery distances.
        k1: size of the k-reciprocal neighbourhood.
        k2: neighbours averaged in the query expansion (1 = none).
        lambda_value: weight of the original distance.
        chunk_rows: rows processed per block (bounds the temporaries).

    Returns:
        (Q, G) re-ranked distances on the input's device.
    """
    if not q_g.is_floating_point():
        q_g, q_q, g_g = q_g.double(), q_q.double(), g_g.double()
    dtype = q_g.dtype
    nq, ng = q_g.shape
    n = nq + ng
    dist = torch.cat([torch.cat([q_q.to(dtype), q_g], 1),
                      torch.cat([q_g.t(), g_g.to(dtype)], 1)], 0)
    dist /= dist.amax(1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    k1 = max(1, min(k1, n - 1))
    k_half = max(1, min(int(round(k1 / 2)), n - 1))
    k2 = max(1, min(k2, n))
    width = max(k1 + 1, k2)
    rank = torch.empty((n, width), dtype=torch.long, device=dist.device)
    for s in range(0, n, chunk_rows):
        rows = slice(s, min(n, s + chunk_rows))
        rank[rows] = _nearest(dist[rows], width)

    half_recip = torch.cat([_reciprocal_mask(rank, slice(t, min(n, t + chunk_rows)), k_half)
                            for t in range(0, n, chunk_rows)])  # (n, kh+1)
    weights = torch.zeros((n, n), dtype=dtype, device=dist.device)
    for s in range(0, n, chunk_rows):
        rows = slice(s, min(n, s + chunk_rows))
        c = rows.stop - rows.start
        recip = _reciprocal_mask(rank, rows, k1)  # (c, k1+1)
        members = torch.zeros((c, n), dtype=torch.int32, device=dist.device)
        members.scatter_(1, rank[rows, :k1 + 1], recip.to(torch.int32))
        # Candidates: the half-size reciprocal sets of i's reciprocal neighbours,
        # added when at least 2/3 of such a set is already reciprocal to i.
        cand_ids = rank[:, :k_half + 1][rank[rows, :k1 + 1]]  # (c, k1+1, kh+1)
        cand_mask = half_recip[rank[rows, :k1 + 1]]
        inside = members.gather(1, cand_ids.reshape(c, -1)).reshape(cand_ids.shape) > 0
        overlap = (inside & cand_mask).sum(-1).to(torch.float64)
        size = cand_mask.sum(-1).to(torch.float64)
        accept = recip & (overlap > (2.0 / 3.0) * size)
        members.scatter_add_(1, cand_ids.reshape(c, -1),
                             (accept[:, :, None] & cand_mask).reshape(c, -1).to(torch.int32))
        w = torch.exp(-dist[rows]) * (members > 0)
        weights[rows] = w / w.sum(1, keepdim=True)

    if k2 != 1:
        expanded = torch.empty_like(weights)
        for s in range(0, n, chunk_rows):
            rows = slice(s, min(n, s + chunk_rows))
            expanded[rows] = weights[rank[rows, :k2]].mean(1)
        weights = expanded

    # Jaccard overlap sum_k min(V[i,k], V[m,k]) over the (sparse) support of V[i].
    support = int((weights[:nq] > 0).sum(1).max())
    gallery_w = weights[nq:].t().contiguous()  # (n, G): gathering rows is cache-friendly
    final = torch.empty((nq, ng), dtype=dtype, device=dist.device)
    step = max(1, _JACCARD_BLOCK // max(1, ng * support))
    for s in range(0, nq, step):
        e = min(nq, s + step)
        vals, idx = weights[s:e].topk(support, dim=1)
        shared = torch.minimum(gallery_w[idx.reshape(-1)].reshape(e - s, support, ng),
                               vals[:, :, None]).sum(1)
        jaccard = 1 - shared / (2 - shared)
        final[s:e] = jaccard * (1 - lambda_value) + dist[s:e, nq:] * lambda_value
    return final
