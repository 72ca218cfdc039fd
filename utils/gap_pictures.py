"""Modality-gap pictures: a 2-D embedding map and cross-modality distance histograms (PNG)."""
from __future__ import annotations

import os

import numpy as np
import torch

from utils.constants import INFRARED, VISIBLE
from utils.distances import FeatureDistances
from utils.errors import UserError
from utils.visualize import save_figure

MODALITY_MARKERS = {VISIBLE: ("o", "visible"), INFRARED: ("^", "infrared")}
METHODS = ("auto", "tsne", "pca")
METHOD_NAMES = {"tsne": "t-SNE", "pca": "PCA"}
# t-SNE's perplexity must stay below the number of points; below this count it cannot
# give a meaningful neighbourhood structure at all.
TSNE_MIN_POINTS = 4
# Entries of one query-by-gallery distance block: a few float64 arrays of ~8 MB each.
_CHUNK_ELEMENTS = 1 << 20


def _as_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()  # bfloat16/half have no numpy equivalent
        return x.numpy()
    return np.asarray(x)


def _features(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    feats = _as_numpy(x).astype(np.float64, copy=False)
    if feats.ndim != 2 or feats.shape[0] == 0:
        raise UserError(f"{name}: expected a non-empty (N, D) feature matrix, "
                        f"got shape {tuple(feats.shape)}")
    return feats


def _labels(x: np.ndarray | torch.Tensor, n: int, name: str) -> np.ndarray:
    labels = _as_numpy(x).reshape(-1)
    if labels.shape[0] != n:
        raise UserError(f"{name}: expected {n} entries (one per feature row), "
                        f"got {labels.shape[0]}")
    return labels


def l2_normalize(feats: np.ndarray) -> np.ndarray:
    """Rows scaled to unit Euclidean norm (all-zero rows stay zero).

    Args:
        feats (np.ndarray): (N, D).
    """
    norms = np.linalg.norm(feats, axis=1, keepdims=True)
    return feats / np.maximum(norms, 1e-12)


def choose_identities(pids: np.ndarray | torch.Tensor, modalities: np.ndarray | torch.Tensor,
                      max_ids: int = 20, seed: int = 0) -> np.ndarray:
    """Up to ``max_ids`` identities to draw, sorted; the same for the same ``seed``.

    Identities seen in both modalities come first (in random order), the others
    only fill what is left, so the map shows the gap wherever it can.

    Args:
        pids (np.ndarray | torch.Tensor): (N,) identity labels.
        modalities (np.ndarray | torch.Tensor): (N,) 0 = visible, 1 = infrared.
        max_ids: the most identities returned (at least 1).
        seed: random seed of the choice.

    Returns:
        np.ndarray: (K,) the chosen identity labels, K <= max_ids.
    """
    if max_ids < 1:
        raise UserError(f"max_ids: expected a positive number of identities, got {max_ids}")
    pids = _as_numpy(pids).reshape(-1)
    modalities = _labels(modalities, pids.shape[0], "modalities")
    visible = set(np.unique(pids[modalities == VISIBLE]).tolist())
    infrared = set(np.unique(pids[modalities == INFRARED]).tolist())
    both = np.array(sorted(visible & infrared))
    single = np.array(sorted((visible | infrared) - (visible & infrared)))
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(both), rng.permutation(single)])
    return np.sort(order[:max_ids]).astype(pids.dtype, copy=False)


def _pca_2d(feats: np.ndarray) -> np.ndarray:
    centred = feats - feats.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    coords = centred @ vt[:2].T
    if coords.shape[1] < 2:  # one feature dimension or one point: pad the missing axis
        coords = np.pad(coords, ((0, 0), (0, 2 - coords.shape[1])))
    return coords


def project_2d(feats: np.ndarray | torch.Tensor, method: str = "auto",
               seed: int = 0) -> tuple[np.ndarray, str]:
    """L2-normalise the rows of ``feats`` and project them to 2-D.

    ``"tsne"`` uses scikit-learn's t-SNE with a perplexity adapted to small N;
    ``"pca"`` uses the two leading principal axes (numpy SVD); ``"auto"`` is
    t-SNE when scikit-learn is installed and there are at least
    ``TSNE_MIN_POINTS`` points, else PCA.

    Args:
        feats (np.ndarray | torch.Tensor): (N, D) features.
        method: ``"auto"``, ``"tsne"`` or ``"pca"``.
        seed: random state of t-SNE.

    Returns:
        tuple[np.ndarray, str]: (N, 2) coordinates and the method used (``"tsne"`` or ``"pca"``).
    """
    if method not in METHODS:
        raise UserError(f"method: expected one of {', '.join(METHODS)}, got {method!r}")
    feats = l2_normalize(_features(feats, "feats"))
    n = feats.shape[0]
    if method == "pca":
        return _pca_2d(feats), "pca"
    try:
        from sklearn.manifold import TSNE
    except ImportError:
        if method == "tsne":
            raise UserError("method='tsne' needs scikit-learn (pip install scikit-learn); "
                            "use method='pca' or 'auto'") from None
        return _pca_2d(feats), "pca"
    if n < TSNE_MIN_POINTS:
        if method == "tsne":
            raise UserError(f"method='tsne' needs at least {TSNE_MIN_POINTS} points, got {n}; "
                            "use method='pca' or 'auto'")
        return _pca_2d(feats), "pca"
    # About n/3 neighbours per point at most, 30 (the usual value) for large maps.
    perplexity = min(30.0, max(2.0, (n - 1) / 3.0))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                random_state=seed)
    return tsne.fit_transform(feats), "tsne"


def _identity_colours(k: int) -> list:
    import matplotlib

    # tab20 first; tab20b/tab20c extend it to 60 distinct colours before any repeat.
    palette = [c for name in ("tab20", "tab20b", "tab20c")
               for c in matplotlib.colormaps[name].colors]
    return [palette[i % len(palette)] for i in range(k)]


def embedding_map(feats: np.ndarray | torch.Tensor, pids: np.ndarray | torch.Tensor,
                  modalities: np.ndarray | torch.Tensor, path: str | os.PathLike,
                  max_ids: int = 20, seed: int = 0, method: str = "auto",
                  title: str = "") -> str:
    """Scatter features of a few identities in 2-D: colour = identity, marker = modality.

    Features are L2-normalised before the projection (as retrieval compares them),
    then projected with t-SNE or PCA (see :func:`project_2d`). Identities are
    picked by :func:`choose_identities`.

    Args:
        feats (np.ndarray | torch.Tensor): (N, D) features.
        pids (np.ndarray | torch.Tensor): (N,) identity labels.
        modalities (np.ndarray | torch.Tensor): (N,) 0 = visible (o), 1 = infrared (^).
        path: PNG file to write (atomically).
        max_ids: the most identities drawn.
        seed: seed of the identity choice and of t-SNE.
        method: ``"auto"``, ``"tsne"`` or ``"pca"``.
        title: figure title; a default naming the identity count and method when empty.

    Returns:
        str: the projection used, ``"tsne"`` or ``"pca"``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    feats = _features(feats, "feats")
    pids = _labels(pids, feats.shape[0], "pids")
    modalities = _labels(modalities, feats.shape[0], "modalities")
    unknown = sorted(set(np.unique(modalities).tolist()) - set(MODALITY_MARKERS))
    if unknown:
        raise UserError(f"modalities: expected 0 (visible) or 1 (infrared), got {unknown}")
    chosen = choose_identities(pids, modalities, max_ids=max_ids, seed=seed)
    keep = np.isin(pids, chosen)
    coords, used = project_2d(feats[keep], method=method, seed=seed)
    pids, modalities = pids[keep], modalities[keep]

    colour_of = dict(zip(chosen.tolist(), _identity_colours(len(chosen))))
    colours = [colour_of[p] for p in pids.tolist()]
    fig, ax = plt.subplots(figsize=(6, 6))
    for modality, (marker, _) in MODALITY_MARKERS.items():
        rows = np.flatnonzero(modalities == modality)
        ax.scatter(coords[rows, 0], coords[rows, 1], c=[colours[i] for i in rows],
                   marker=marker, s=28, edgecolors="black", linewidths=0.3)
    handles = [Line2D([], [], linestyle="", marker=marker, color="grey", label=name)
               for marker, name in MODALITY_MARKERS.values()]
    ax.legend(handles=handles, loc="best", fontsize=8)
    ax.set_title(title or f"{len(chosen)} identities ({METHOD_NAMES[used]}, colour = identity)")
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return used


def _sample_ranks(total: int, max_pairs: int, rng: np.random.Generator) -> np.ndarray | None:
    """Sorted ranks of ``max_pairs`` pairs drawn uniformly from ``total``; None keeps all.

    Memory is O(max_pairs) even for a huge ``total`` (``Generator.choice`` may build
    a ``total``-long array): duplicates of uniform draws are redrawn, which keeps
    every subset equally likely.
    """
    if total <= max_pairs:
        return None
    if total <= 4 * max_pairs:
        return np.sort(rng.permutation(total)[:max_pairs])
    ranks = np.unique(rng.integers(0, total, size=max_pairs))
    while ranks.size < max_pairs:
        extra = rng.integers(0, total, size=max_pairs - ranks.size)
        ranks = np.unique(np.concatenate([ranks, extra]))
    return ranks


def _take(block: np.ndarray, mask: np.ndarray, ranks: np.ndarray | None,
          offset: int) -> np.ndarray:
    """Distances of ``block`` under ``mask`` whose rank (counted from ``offset``) is drawn."""
    values = block[mask]
    if ranks is None:
        return values
    lo, hi = np.searchsorted(ranks, [offset, offset + values.shape[0]])
    return values[ranks[lo:hi] - offset]


# metric -> x-axis label; the values are those the ranking orders by.
METRIC_LABELS = {"sqeuclidean": "squared Euclidean distance", "euclidean": "Euclidean distance",
                 "cosine": "cosine distance (1 - cos)",
                 "dot": "minus the inner product"}


def _block_distances(qc: np.ndarray, g: np.ndarray, metric: str) -> np.ndarray:
    """(c, G) distances of a block of query rows under ``metric`` (``utils.distances``)."""
    block = FeatureDistances(torch.from_numpy(qc), torch.from_numpy(g), metric, normalize=False)
    return block.full().double().numpy()


def _pair_distances(q: np.ndarray, g: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    max_pairs: int, seed: int, metric: str = "euclidean"
                    ) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Same- and different-identity distances (row-major pair order) and both pair totals."""
    q_ids, q_counts = np.unique(q_pids, return_counts=True)
    g_ids, g_counts = np.unique(g_pids, return_counts=True)
    _, q_at, g_at = np.intersect1d(q_ids, g_ids, assume_unique=True, return_indices=True)
    same_total = int((q_counts[q_at] * g_counts[g_at]).sum())
    rng = np.random.default_rng(seed)
    same_ranks = _sample_ranks(same_total, max_pairs, rng)
    diff_total = q.shape[0] * g.shape[0] - same_total
    diff_ranks = _sample_ranks(diff_total, max_pairs, rng)
    rows = max(1, _CHUNK_ELEMENTS // g.shape[0])
    same, diff = [], []
    same_seen = diff_seen = 0
    for start in range(0, q.shape[0], rows):
        block = _block_distances(q[start:start + rows], g, metric)
        is_same = q_pids[start:start + rows, None] == g_pids[None, :]
        same.append(_take(block, is_same, same_ranks, same_seen))
        diff.append(_take(block, ~is_same, diff_ranks, diff_seen))
        same_seen += int(is_same.sum())
        diff_seen += is_same.size - int(is_same.sum())
    return np.concatenate(same), np.concatenate(diff), same_total, diff_total


def distance_histograms(q_feat: np.ndarray | torch.Tensor, g_feat: np.ndarray | torch.Tensor,
                        q_pids: np.ndarray | torch.Tensor, g_pids: np.ndarray | torch.Tensor,
                        path: str | os.PathLike, q_name: str = "infrared",
                        g_name: str = "visible", normalize: bool = True, bins: int = 50,
                        max_pairs: int = 2_000_000, seed: int = 0, metric: str = "sqeuclidean"
                        ) -> dict:
    """Histograms of cross-modality distances for same- and different-identity pairs.

    Every query-gallery pair is one distance (``metric``, on L2-normalised features
    when ``normalize``). When a set holds more than ``max_pairs`` pairs, ``max_pairs``
    of them are drawn uniformly without replacement (fixed by ``seed``); distances
    are computed in blocks of query rows, so memory stays bounded for any Q x G.

    Args:
        q_feat (np.ndarray | torch.Tensor): (Q, D) query features.
        g_feat (np.ndarray | torch.Tensor): (G, D) gallery features.
        q_pids (np.ndarray | torch.Tensor): (Q,) query identity labels.
        g_pids (np.ndarray | torch.Tensor): (G,) gallery identity labels.
        path: PNG file to write (atomically).
        q_name, g_name: modality names for the title.
        normalize: L2-normalise the features first.
        bins: histogram bins (shared by both sets).
        max_pairs: the most pairs kept per set.
        seed: seed of the pair sampling.
        metric: a name of ``utils.distances.METRICS`` (TEST.DISTANCE: the distance the
            ranking uses).

    Returns:
        dict: ``distance`` (the metric), ``same_mean``, ``diff_mean`` (mean distances),
        ``same_pairs``, ``diff_pairs`` (pairs used) and ``gap`` = ``diff_mean - same_mean``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    q, g = _features(q_feat, "q_feat"), _features(g_feat, "g_feat")
    if q.shape[1] != g.shape[1]:
        raise UserError(f"g_feat: expected {q.shape[1]} feature dimensions like q_feat, "
                        f"got {g.shape[1]}")
    q_pids = _labels(q_pids, q.shape[0], "q_pids")
    g_pids = _labels(g_pids, g.shape[0], "g_pids")
    if bins < 1:
        raise UserError(f"bins: expected a positive number of bins, got {bins}")
    if metric not in METRIC_LABELS:
        raise UserError(f"metric: expected one of {', '.join(METRIC_LABELS)}, got {metric!r}")
    if max_pairs < 1:
        raise UserError(f"max_pairs: expected a positive number of pairs, got {max_pairs}")
    if normalize:
        q, g = l2_normalize(q), l2_normalize(g)
    same, diff, same_total, diff_total = _pair_distances(q, g, q_pids, g_pids, max_pairs, seed,
                                                         metric)
    for name, values in (("same", same), ("different", diff)):
        if values.size == 0:
            raise UserError(f"q_pids/g_pids: no {name}-identity pairs between query and gallery")
    stats = {"distance": metric, "same_mean": float(same.mean()),
             "diff_mean": float(diff.mean()),
             "same_pairs": int(same.size), "diff_pairs": int(diff.size)}
    stats["gap"] = stats["diff_mean"] - stats["same_mean"]

    edges = np.linspace(min(same.min(), diff.min()), max(same.max(), diff.max()), bins + 1)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for values, total, mean, colour, label in (
            (same, same_total, stats["same_mean"], "tab:green", "same identity"),
            (diff, diff_total, stats["diff_mean"], "tab:red", "different identity")):
        count = f"{values.size} pairs" if values.size == total else \
            f"{values.size} of {total} pairs"
        ax.hist(values, bins=edges, density=True, alpha=0.5, color=colour,
                label=f"{label} ({count})")
        ax.axvline(mean, color=colour, linestyle="--", linewidth=1.5,
                   label=f"{label} mean {mean:.3f}")
    ax.set_xlabel(METRIC_LABELS[metric] + (" (L2-normalised features)" if normalize else ""))
    ax.set_ylabel("density")
    ax.set_title(f"{q_name} query vs {g_name} gallery: gap {stats['gap']:.3f}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return stats
