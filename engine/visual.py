"""Pictures of an evaluation: ranked-results sheets, CMC curves and the modality gap."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from yacs.config import CfgNode

from engine.evaluate import Evaluation
from utils.distances import feature_distance
from utils.gap_pictures import distance_histograms, embedding_map
from utils.visualize import cmc_curves, ranked_sheet


def file_name(setting_name: str) -> str:
    """``all-search single-shot`` -> ``all-search_single-shot``."""
    return setting_name.replace(" ", "_")


def write_pictures(cfg: CfgNode, ev: Evaluation, out_dir: str | Path, num_queries: int = 8,
                   topk: int = 10, gap_ids: int = 20) -> list[Path]:
    """Write ``cmc.png``, one ``ranked_<setting>.png`` per setting (its first trial) and the
    modality-gap pictures ``embedding.png`` and ``distances.png``.

    Ranked sheets: queries spread evenly over the query list; the ranking is the
    protocol's (its rule applied, no re-ranking), framed green for the same id,
    red otherwise. Modality gap (the headline setting's two sets, all images):
    a 2-D map (t-SNE, or PCA without scikit-learn) of up to ``gap_ids``
    identities, colour = identity, marker = modality; histograms of
    same-identity and different-identity cross-modality distances with their means.

    The modality-gap figures (projection used, mean distances and their gap)
    are also recorded in ``ev.results["modality_gap"]``.

    Returns:
        The written files.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, sets, feats = ev.results, ev.sets, ev.feats
    curves = {name: np.mean([t["cmc"] for t in entry["trials"]], axis=0) / 100
              for name, entry in results["settings"].items()}
    written = [out_dir / "cmc.png"]
    cmc_curves(curves, written[0], title=f"CMC, {results['dataset']}")
    for setting in ev.settings:
        query, gallery = sets[setting.query], sets[setting.gallery]
        g_idx = setting.gallery_indices(setting.trials[0], len(gallery))
        q_idx = np.unique(np.linspace(0, len(query) - 1, min(num_queries, len(query)))
                          .round().astype(int))
        q = [query[i] for i in q_idx]
        g = [gallery[i] for i in g_idx]
        dist = feature_distance(feats[setting.query][torch.from_numpy(q_idx)],
                                feats[setting.gallery][torch.from_numpy(g_idx)],
                                cfg.TEST.DISTANCE, cfg.TEST.NORM).float().cpu()
        mask = setting.rule.removed(*(torch.tensor([getattr(r, a) for r in recs])
                                      for recs in (q, g) for a in ("pid", "cam")))
        if mask is not None:
            dist[mask] = float("inf")
        path = out_dir / f"ranked_{file_name(setting.name)}.png"
        ranked_sheet([r.path for r in q], [r.pid for r in q], [r.path for r in g],
                     [r.pid for r in g], dist.numpy(), path, topk=topk)
        written.append(path)
    head = next(s for s in ev.settings if s.name == results["headline"]["setting"])
    records = sets[head.query] + sets[head.gallery]
    both = torch.cat([feats[head.query], feats[head.gallery]]).float().cpu()
    method = embedding_map(both, [r.pid for r in records], [r.modality for r in records],
                           out_dir / "embedding.png", max_ids=gap_ids,
                           title=f"{results['dataset']} {results['split']}: test features")
    gap = distance_histograms(feats[head.query], feats[head.gallery],
                              [r.pid for r in sets[head.query]],
                              [r.pid for r in sets[head.gallery]], out_dir / "distances.png",
                              q_name=head.query, g_name=head.gallery, normalize=cfg.TEST.NORM,
                              metric=cfg.TEST.DISTANCE)
    written += [out_dir / "embedding.png", out_dir / "distances.png"]
    results["modality_gap"] = {"embedding": method, **{k: round(float(v), 6) if
                                                        isinstance(v, float) else v
                                                        for k, v in gap.items()}}
    return written
