"""Ranking metrics of the cross-modality protocols: CMC, mAP and mINP.

All three protocols share one vectorized routine. For every query the gallery
is ranked by distance (a stable sort: ties go to the lower gallery index), the
protocol's gallery filter is applied, and

- CMC@k is 1 when a true match is within the first k entries of the filtered
  ranking, de-duplicated by identity (first occurrence of each id kept) for
  SYSU-MM01 and LLCM and as it is for RegDB;
- AP is the mean over the true matches of (matches so far) / (rank of the
  match) and INP is (number of matches) / (rank of the last match), both over
  the filtered ranking without de-duplication;
- queries with no true match left after the filter are skipped.

Work runs in torch on the distance matrix's device (the GPU when the features
are there), a chunk of queries at a time so memory stays bounded for large
galleries, with no per-query Python loop. Only the true matches' ranks are
needed, so each row is sorted by value (NumPy's vectorized sort on the CPU)
and the matches are located in it by binary search; the gallery is never
permuted.
"""
from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from utils.errors import UserError

ArrayLike = np.ndarray | torch.Tensor | list
Rule = Literal["sysu", "regdb", "llcm"]

# Official SYSU-MM01 camera labels for cams 1..6: cams 2 and 3 share a room, so
# a gallery entry whose label equals the query's is skipped.
SYSU_CAMERA_LABELS = (1, 2, 2, 4, 5, 6)

# Distance-matrix elements handled per chunk: a few (chunk, G) temporaries of
# at most 8 bytes per element each are alive at once.
DEFAULT_CHUNK_ELEMENTS = 1 << 21
_INF = float("inf")


def _as_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, list) else x)
    return t.to(device=device, dtype=dtype or t.dtype)


def _sysu_labels(cams: torch.Tensor) -> torch.Tensor:
    table = torch.tensor((0,) + SYSU_CAMERA_LABELS, device=cams.device)
    if cams.numel() and (int(cams.min()) < 1 or int(cams.max()) > 6):
        raise ValueError("SYSU-MM01 camera ids must be 1..6")
    return table[cams.long()]


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Values of every row in ascending order (NumPy's vectorized sort on the CPU,
    several times faster there than torch's)."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


def _tied_before(keys: torch.Tensor, rows: torch.Tensor, values: torch.Tensor,
                 cols: torch.Tensor, block: int) -> torch.Tensor:
    """For each (row, value, col): entries of ``keys[row]`` equal to value left of col.

    Ties are broken by gallery index, so these entries rank before the match.
    """
    out = torch.empty_like(rows)
    col_ids = torch.arange(keys.shape[1], device=keys.device)[None]
    step = max(1, block // keys.shape[1])
    for s in range(0, rows.numel(), step):
        r, v, c = rows[s:s + step], values[s:s + step], cols[s:s + step]
        out[s:s + step] = ((keys[r] == v[:, None]) & (col_ids < c[:, None])).sum(1)
    return out


def _chunk_sums(dist: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                q_key: torch.Tensor | None, g_key: torch.Tensor | None, num_ids: int,
                rule: Rule, max_rank: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Sums over the valid queries of one chunk.

    The gallery is never permuted: each row's distances are sorted once (the
    skipped entries moved to +inf), a true match's rank is the number of kept
    entries before it (binary search, plus equal distances at lower gallery
    indices), and the de-duplicated rank of the first match is the number of
    distinct ids among the kept entries before it.

    Args:
        dist: (c, G) finite distances.
        q_pids: (c,) compact query ids in 0..num_ids-1; g_pids: (G,) gallery ones.
        q_key, g_key: (c,), (G,) camera keys (None for regdb).

    Returns:
        cmc_sum (max_rank,) float64, ap_sum and inp_sum (0-dim float64), number
        of valid queries.
    """
    c, g = dist.shape
    dev = dist.device
    if not bool(torch.isfinite(dist.amax(1)).all() and torch.isfinite(dist.amin(1)).all()):
        raise ValueError("distmat has NaN or infinite entries")
    match = g_pids.int()[None] == q_pids.int()[:, None]
    removed = None
    if rule != "regdb":
        removed = g_key[None] == q_key[:, None]
        if rule == "llcm":  # only the same person seen by the same camera
            removed &= match
        match &= ~removed
    rows, cols = match.nonzero(as_tuple=True)
    del match
    counts = torch.bincount(rows, minlength=c)
    valid = counts > 0
    n_valid = int(valid.sum())
    cmc_sum = torch.zeros(max_rank, dtype=torch.float64, device=dev)
    zero = torch.zeros((), dtype=torch.float64, device=dev)
    if n_valid == 0:
        return cmc_sum, zero, zero, 0
    keys = dist + 0.0  # a copy, with -0.0 turned into +0.0
    if removed is not None:
        keys.masked_fill_(removed, _INF)
        del removed
    ordered = _sort_rows(keys)

    # Matches laid out one row per query (padded with +inf / column -1).
    slot = torch.arange(rows.numel(), device=dev) - (counts.cumsum(0) - counts)[rows]
    width = int(counts.max())
    values = torch.full((c, width), _INF, dtype=keys.dtype, device=dev)
    values[rows, slot] = keys[rows, cols]
    mcols = torch.full((c, width), -1, dtype=torch.long, device=dev)
    mcols[rows, slot] = cols
    rank = torch.searchsorted(ordered, values)  # kept entries with a smaller distance
    real = torch.arange(width, device=dev)[None] < counts[:, None]
    tied = (torch.searchsorted(ordered, values, right=True) - rank > 1) & real
    if bool(tied.any()):
        tr, ts = tied.nonzero(as_tuple=True)
        rank[tr, ts] += _tied_before(keys, tr, values[tr, ts], mcols[tr, ts],
                                     DEFAULT_CHUNK_ELEMENTS)
    rank = torch.where(real, rank + 1, torch.iinfo(torch.int64).max)
    rank, order = torch.sort(rank, dim=1)  # each query's matches in ranking order

    ordinal = torch.arange(1, width + 1, device=dev, dtype=torch.float64)[None]
    ap = torch.where(real, ordinal / rank.double(), zero).sum(1)[valid] / counts[valid]
    inp = counts[valid].double() / rank.gather(1, (counts - 1).clamp(min=0)[:, None])[valid, 0]
    if rule == "regdb":
        first_rank = rank[valid, 0] - 1
    else:
        first_value = values.gather(1, order[:, :1])
        first_col = mcols.gather(1, order[:, :1])
        col_ids = torch.arange(g, device=dev)[None]
        before = (keys < first_value) | ((keys == first_value) & (col_ids < first_col))
        seen = torch.zeros((c, num_ids), dtype=torch.int32, device=dev)
        seen.index_add_(1, g_pids, before.to(torch.int32))
        first_rank = (seen[valid] > 0).sum(1)
    ks = torch.arange(max_rank, device=dev)
    cmc_sum += (first_rank[:, None] <= ks[None]).double().sum(0)
    return cmc_sum, ap.sum(), inp.sum(), n_valid


def evaluate_ranking(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
                     q_camids: ArrayLike | None = None, g_camids: ArrayLike | None = None,
                     rule: Rule = "regdb", max_rank: int = 20,
                     chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
                     ) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP of a distance matrix under one protocol's gallery rule.

    Args:
        distmat: (Q, G) distances, smaller is closer (numpy or torch; a torch
            tensor is evaluated on its own device).
        q_pids, g_pids: (Q,), (G,) identity labels.
        q_camids, g_camids: (Q,), (G,) camera ids (needed by sysu and llcm).
        rule: ``sysu`` (skip gallery entries with the query's official camera
            label, de-duplicated CMC), ``llcm`` (skip same id and same camera,
            de-duplicated CMC) or ``regdb`` (nothing skipped, plain CMC).
        max_rank: length of the CMC curve; ranks beyond the gallery size repeat
            the last value.
        chunk_elements: distance elements processed at a time.

    Returns:
        cmc (max_rank,) float64 in [0, 1], mAP and mINP floats in [0, 1].

    Raises:
        UserError: no query has a true match in the gallery.
    """
    dist = distmat if isinstance(distmat, torch.Tensor) else torch.from_numpy(
        np.ascontiguousarray(distmat))
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D (Q, G), got shape {tuple(dist.shape)}")
    if not dist.is_floating_point():
        dist = dist.double()
    elif dist.dtype in (torch.float16, torch.bfloat16):
        dist = dist.float()
    device = dist.device
    num_q, num_g = dist.shape
    qp = _as_tensor(q_pids, device).long().reshape(-1)
    gp = _as_tensor(g_pids, device).long().reshape(-1)
    if qp.numel() != num_q or gp.numel() != num_g:
        raise ValueError(f"distmat is {num_q}x{num_g} but got {qp.numel()} query and "
                         f"{gp.numel()} gallery ids")
    # Compact ids: the de-duplication table is as wide as the id set.
    uniq, inverse = torch.unique(torch.cat([gp, qp]), return_inverse=True)
    gp, qp = inverse[:num_g], inverse[num_g:]  # int64: index_add_ needs it
    q_key = g_key = None
    if rule != "regdb":
        if q_camids is None or g_camids is None:
            raise ValueError(f"rule {rule!r} needs query and gallery camera ids")
        q_key = _as_tensor(q_camids, device).long().reshape(-1)
        g_key = _as_tensor(g_camids, device).long().reshape(-1)
        if rule == "sysu":
            q_key, g_key = _sysu_labels(q_key), _sysu_labels(g_key)
        q_key, g_key = q_key.int(), g_key.int()

    step = max(1, chunk_elements // max(num_g, 1))
    cmc = torch.zeros(max_rank, dtype=torch.float64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_valid = 0
    for s in range(0, num_q, step):
        e = min(num_q, s + step)
        c_cmc, c_ap, c_inp, c_n = _chunk_sums(
            dist[s:e], qp[s:e], gp, None if q_key is None else q_key[s:e], g_key,
            len(uniq), rule, max_rank)
        cmc += c_cmc
        ap_sum += c_ap
        inp_sum += c_inp
        n_valid += c_n
    if n_valid == 0:
        raise UserError(f"none of the {num_q} queries has a true match among the {num_g} "
                        "gallery images: query and gallery must share identities")
    return ((cmc / n_valid).cpu().numpy(), float(ap_sum) / n_valid, float(inp_sum) / n_valid)


def eval_sysu(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
              g_camids: ArrayLike, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """SYSU-MM01: a query from cam 3 skips gallery cam 2 (official labels [1 2 2 4 5 6]).

    Args:
        distmat: (Q, G) distances; q_pids, q_camids: (Q,); g_pids, g_camids: (G,).

    Returns:
        (cmc (max_rank,), mAP, mINP); CMC over the de-duplicated id list.
    """
    return evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, "sysu", max_rank)


def eval_regdb(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
               max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """RegDB: nothing is removed from the gallery; plain CMC.

    Args:
        distmat: (Q, G) distances; q_pids: (Q,); g_pids: (G,).

    Returns:
        (cmc (max_rank,), mAP, mINP).
    """
    return evaluate_ranking(distmat, q_pids, g_pids, rule="regdb", max_rank=max_rank)


def eval_llcm(distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
              g_camids: ArrayLike, max_rank: int = 20) -> tuple[np.ndarray, float, float]:
    """LLCM: skip gallery images with the query's id and camera; de-duplicated CMC.

    Args:
        distmat: (Q, G) distances; q_pids, q_camids: (Q,); g_pids, g_camids: (G,).

    Returns:
        (cmc (max_rank,), mAP, mINP).
    """
    return evaluate_ranking(distmat, q_pids, g_pids, q_camids, g_camids, "llcm", max_rank)
