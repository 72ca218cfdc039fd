"""Pictures of an evaluation: ranked-results sheets and CMC curves per setting."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from data.base import ImageRecord
from engine.inference import pairwise_distance
from engine.protocols import Setting
from utils.metrics import SYSU_CAMERA_LABELS
from utils.visualize import cmc_curves, ranked_sheet


def skipped(rule: str, q_pids: np.ndarray, q_cams: np.ndarray, g_pids: np.ndarray,
            g_cams: np.ndarray) -> np.ndarray:
    """(Q, G) bool: gallery entries the protocol removes from each query's ranking.

    ``sysu``: same official camera label (a cam-3 query skips cam 2); ``llcm``: same
    id and same camera; ``regdb``: nothing.
    """
    if rule == "regdb":
        return np.zeros((len(q_pids), len(g_pids)), dtype=bool)
    if rule == "sysu":
        labels = np.asarray(SYSU_CAMERA_LABELS)
        return labels[q_cams - 1][:, None] == labels[g_cams - 1][None, :]
    return (q_pids[:, None] == g_pids[None, :]) & (q_cams[:, None] == g_cams[None, :])


def file_name(setting_name: str) -> str:
    """``all-search single-shot`` -> ``all-search_single-shot``."""
    return setting_name.replace(" ", "_")


def write_pictures(cfg: CfgNode, results: dict[str, Any], settings: Sequence[Setting],
                   feats: dict[str, torch.Tensor], sets: dict[str, list[ImageRecord]],
                   out_dir: str | Path, num_queries: int = 8, topk: int = 10) -> list[Path]:
    """Write ``cmc.png`` and one ``ranked_<setting>.png`` per setting (its first trial).

    Queries are spread evenly over the query list; the ranking is the protocol's
    (camera rule applied, no re-ranking), framed green for the same id, red otherwise.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    curves = {name: np.mean([t["cmc"] for t in entry["trials"]], axis=0) / 100
              for name, entry in results["settings"].items()}
    cmc_path = out_dir / "cmc.png"
    cmc_curves(curves, cmc_path, title=f"CMC, {results['dataset']}")
    written.append(cmc_path)
    for setting in settings:
        query, gallery = sets[setting.query], sets[setting.gallery]
        trial = setting.trials[0]
        g_idx = (np.arange(len(gallery)) if setting.sample is None
                 else np.asarray(setting.sample(trial)))
        q_idx = np.unique(np.linspace(0, len(query) - 1, min(num_queries, len(query)))
                          .round().astype(int))
        q_feat = feats[setting.query][torch.from_numpy(q_idx)]
        g_feat = feats[setting.gallery][torch.from_numpy(g_idx)]
        dist = pairwise_distance(q_feat, g_feat, cfg.TEST.DISTANCE, cfg.TEST.NORM)
        dist = dist.float().cpu().numpy()
        q = [query[i] for i in q_idx]
        g = [gallery[i] for i in g_idx]
        mask = skipped(setting.rule, np.array([r.pid for r in q]), np.array([r.cam for r in q]),
                       np.array([r.pid for r in g]), np.array([r.cam for r in g]))
        dist[mask] = np.inf
        path = out_dir / f"ranked_{file_name(setting.name)}.png"
        ranked_sheet([r.path for r in q], [r.pid for r in q], [r.path for r in g],
                     [r.pid for r in g], dist, path, topk=topk)
        written.append(path)
    return written
