"""Ranking metrics of the cross-modality protocols: CMC, mAP and mINP.

Every protocol shares one vectorized routine. For every query the gallery is
ranked by distance (a stable sort: ties go to the lower gallery index), the
protocol's gallery filter (its :class:`RankingRule`) is applied, and

- CMC@k is 1 when a true match is within the first k entries of the filtered
  ranking, de-duplicated by identity (first occurrence of each id kept) when
  the rule says so (SYSU-MM01, LLCM) and as it is otherwise (RegDB);
- AP is the mean over the true matches of (matches so far) / (rank of the
  match) and INP is (number of matches) / (rank of the last match), both over
  the filtered ranking without de-duplication;
- queries with no true match left after the filter are skipped.

Work runs in torch on the distance matrix's device (the GPU when the features
are there), a chunk of queries at a time so memory stays bounded for large
galleries (:class:`FeatureDistances` computes each chunk's distances from the
features, so the whole matrix never exists), with no per-query Python loop.
Only the true matches' ranks are needed, so each row is sorted by value
(NumPy's vectorized sort on the CPU) and the matches are located in it by
binary search; the gallery is never permuted.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.distances import FeatureDistances
from utils.errors import UserError

ArrayLike = np.ndarray | torch.Tensor | list

# Distance-matrix elements handled per chunk: a few (chunk, G) temporaries of
# at most 8 bytes per element each are alive at once.
DEFAULT_CHUNK_ELEMENTS = 1 << 21
_INF = float("inf")


def _as_tensor(x: ArrayLike, device: torch.device, dtype: torch.dtype | None = None
               ) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if isinstance(x, list) else x)
    return t.to(device=device, dtype=dtype or t.dtype)


@dataclass(frozen=True)
class RankingRule:
    """Which gallery entries each query's ranking drops, and how CMC counts.

    Attributes:
        name: label written with the results (each dataset names its rule).
        skip: ``none`` (keep everything); ``camera`` (drop gallery entries whose
            camera group equals the query's, whatever the id); ``id_camera``
            (drop entries of the query's own id in the query's camera group).
        camera_groups: ``((camera, group), ...)``: cameras that share a group
            (e.g. two cameras in one room); a camera not listed is its own group.
        dedup_cmc: CMC over the ranking de-duplicated by identity (each id kept at
            its first occurrence); mAP and mINP never de-duplicate.
    """

    name: str
    skip: str = "none"
    camera_groups: tuple[tuple[int, int], ...] = ()
    dedup_cmc: bool = False

    def __post_init__(self) -> None:
        if self.skip not in ("none", "camera", "id_camera"):
            raise ValueError(f"RankingRule.skip = {self.skip!r}: expected none, camera or "
                             "id_camera")

    def groups(self, cams: torch.Tensor) -> torch.Tensor:
        """(N,) camera ids -> (N,) int32 camera groups."""
        out = cams.long().clone()
        for cam, group in self.camera_groups:
            out[cams == cam] = group
        return out.int()

    def removed(self, q_pids: torch.Tensor, q_cams: torch.Tensor | None,
                g_pids: torch.Tensor, g_cams: torch.Tensor | None) -> torch.Tensor | None:
        """(Q, G) bool: the gallery entries dropped from each query's ranking (None = none).

        Args:
            q_pids, q_cams: (Q,) ids and camera ids; g_pids, g_cams: (G,).
        """
        if self.skip == "none":
            return None
        if q_cams is None or g_cams is None:
            raise ValueError(f"ranking rule {self.name!r} needs query and gallery camera ids")
        out = self.groups(g_cams)[None] == self.groups(q_cams)[:, None]
        if self.skip == "id_camera":  # only the same person seen by the same camera
            out &= g_pids[None] == q_pids[:, None]
        return out


# Nothing dropped, plain CMC.
PLAIN = RankingRule("plain")


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
                q_cams: torch.Tensor | None, g_cams: torch.Tensor | None, num_ids: int,
                rule: RankingRule, max_rank: int
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
        q_cams, g_cams: (c,), (G,) camera ids (None when the rule needs none).

    Returns:
        cmc_sum (max_rank,) float64, ap_sum and inp_sum (0-dim float64), number
        of valid queries.
    """
    c, g = dist.shape
    dev = dist.device
    if not bool(torch.isfinite(dist.amax(1)).all() and torch.isfinite(dist.amin(1)).all()):
        raise ValueError("distmat has NaN or infinite entries")
    match = g_pids.int()[None] == q_pids.int()[:, None]
    removed = rule.removed(q_pids, q_cams, g_pids, g_cams)
    if removed is not None:
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
    if not rule.dedup_cmc:
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


def evaluate_ranking(distmat: ArrayLike | FeatureDistances, q_pids: ArrayLike,
                     g_pids: ArrayLike, q_camids: ArrayLike | None = None,
                     g_camids: ArrayLike | None = None, rule: RankingRule = PLAIN,
                     max_rank: int = 20, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS
                     ) -> tuple[np.ndarray, float, float]:
    """CMC, mAP and mINP of a ranking under one protocol's gallery rule.

    Args:
        distmat: (Q, G) distances, smaller is closer (numpy or torch; a torch
            tensor is evaluated on its own device), or :class:`FeatureDistances`
            computing them a chunk at a time.
        q_pids, g_pids: (Q,), (G,) identity labels.
        q_camids, g_camids: (Q,), (G,) camera ids (needed by rules that skip by camera).
        rule: the protocol's :class:`RankingRule`.
        max_rank: length of the CMC curve; ranks beyond the gallery size repeat
            the last value.
        chunk_elements: distance elements processed at a time.

    Returns:
        cmc (max_rank,) float64 in [0, 1], mAP and mINP floats in [0, 1].

    Raises:
        UserError: no query has a true match in the gallery.
    """
    if isinstance(distmat, FeatureDistances):
        dist: FeatureDistances | torch.Tensor = distmat
    else:
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
    q_cams = None if q_camids is None else _as_tensor(q_camids, device).long().reshape(-1)
    g_cams = None if g_camids is None else _as_tensor(g_camids, device).long().reshape(-1)

    step = max(1, chunk_elements // max(num_g, 1))
    cmc = torch.zeros(max_rank, dtype=torch.float64, device=device)
    ap_sum = torch.zeros((), dtype=torch.float64, device=device)
    inp_sum = torch.zeros((), dtype=torch.float64, device=device)
    n_valid = 0
    for s in range(0, num_q, step):
        e = min(num_q, s + step)
        c_cmc, c_ap, c_inp, c_n = _chunk_sums(
            dist[s:e], qp[s:e], gp, None if q_cams is None else q_cams[s:e], g_cams,
            len(uniq), rule, max_rank)
        cmc += c_cmc
        ap_sum += c_ap
        inp_sum += c_inp
        n_valid += c_n
    if n_valid == 0:
        raise UserError(f"none of the {num_q} queries has a true match among the {num_g} "
                        "gallery images: query and gallery must share identities")
    return ((cmc / n_valid).cpu().numpy(), float(ap_sum) / n_valid, float(inp_sum) / n_valid)
