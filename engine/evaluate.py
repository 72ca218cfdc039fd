"""Run a dataset's evaluation protocol on a model and report its figures.

``evaluate(cfg, model, dataset)`` asks the dataset for its evaluation sets and
protocol settings, extracts every set's features once, runs each setting
(every trial's gallery indexes the precomputed features) and returns a
JSON-serialisable dict::

    {"dataset": "sysumm", "split": "test",
     "protocol": {"gallery_sampling": "official", "perm_path": ..., "feature": "bn", ...},
     "settings": {"all-search single-shot": {
         "query": 3803, "gallery": 301, "rule": "sysu",
         "trials": [{"trial": 1, "query": .., "gallery": .., "R1": .., ..., "cmc": [..]}, ..],
         "mean": {"R1": .., "R5": .., "R10": .., "R20": .., "mAP": .., "mINP": ..},
         "std": {...}}, ...},
     "headline": {"setting": "all-search single-shot", "R1": .., "mAP": .., "mINP": ..}}

Figures are percentages; ``std`` is the sample standard deviation over trials
(0 for a single trial). Distances are computed a chunk of queries at a time
from the features (on their device), so no query x gallery matrix is ever
whole, except for k-reciprocal re-ranking, which needs it.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from data import DATASETS
from data.base import ImageRecord, VIReIDDataset
from data.protocols import Setting
from engine.inference import extract_record_features
from utils.distances import FeatureDistances, feature_distance
from utils.metrics import evaluate_ranking
from utils.rerank import check_rerank_size, k_reciprocal_rerank

RANKS = (1, 5, 10, 20)
FIGURES = ("mAP", "mINP")

Log = Callable[[str], None]


@dataclass
class Evaluation:
    """One evaluation: its results and what they were computed from.

    Attributes:
        results: the results dict (module docstring).
        settings: the protocol's settings.
        sets: the evaluation record lists by set name.
        feats: ``{set name: (N, D) float32}`` features, rows in record order.
    """

    results: dict[str, Any]
    settings: list[Setting]
    sets: dict[str, list[ImageRecord]]
    feats: dict[str, torch.Tensor]


def figures(cmc: np.ndarray, m_ap: float, m_inp: float) -> dict[str, Any]:
    """Percentages: R1, R5, R10, R20 (those within the curve), mAP, mINP and the curve."""
    out: dict[str, Any] = {f"R{k}": round(100 * float(cmc[k - 1]), 4)
                           for k in RANKS if k <= len(cmc)}
    out.update(mAP=round(100 * m_ap, 4), mINP=round(100 * m_inp, 4),
               cmc=[round(100 * float(v), 4) for v in cmc])
    return out


def summarize(entry: dict[str, Any]) -> dict[str, Any]:
    """Fill ``mean`` and ``std`` of a setting entry from its ``trials`` list."""
    names = [k for k in entry["trials"][0] if k.startswith("R") or k in FIGURES]
    values = {k: np.array([t[k] for t in entry["trials"]], dtype=np.float64) for k in names}
    entry["mean"] = {k: round(float(v.mean()), 4) for k, v in values.items()}
    entry["std"] = {k: round(float(v.std(ddof=1)) if len(v) > 1 else 0.0, 4)
                    for k, v in values.items()}
    return entry


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The mean figures of the dataset's headline setting (the first setting evaluated
    when the headline was not)."""
    name = DATASETS[results["dataset"]].headline
    if name not in results["settings"]:
        name = next(iter(results["settings"]))
    entry = results["settings"][name]
    return {"setting": name, **{k: entry["mean"][k] for k in ("R1", "mAP", "mINP")
                                if k in entry["mean"]}}


def evaluate_features(cfg: CfgNode, settings: Sequence[Setting],
                      feats: dict[str, torch.Tensor], sets: dict[str, list[ImageRecord]],
                      log: Log | None = None) -> dict[str, dict[str, Any]]:
    """Run every setting and trial on precomputed features.

    Args:
        cfg: TEST.NORM, TEST.DISTANCE, TEST.RERANK* and TEST.MAX_RANK apply.
        settings: from the dataset's ``settings``.
        feats: (N_name, D) features per set name (rows in record order).
        sets: the record lists per set name.

    Returns:
        ``{setting name: entry}`` as in the module docstring.

    Re-ranking's size limit is checked beforehand (:func:`check_settings`).
    """
    distance, norm = cfg.TEST.DISTANCE, cfg.TEST.NORM
    labels = {k: (np.array([r.pid for r in v]), np.array([r.cam for r in v]))
              for k, v in sets.items()}
    out: dict[str, dict[str, Any]] = {}
    self_dist: dict[str, torch.Tensor] = {}
    for setting in settings:
        q_feat = feats[setting.query]
        q_pids, q_cams = labels[setting.query]
        g_all = feats[setting.gallery]
        g_pids_all, g_cams_all = labels[setting.gallery]
        entry: dict[str, Any] = {"query": len(q_pids), "rule": setting.rule.name, "trials": []}
        for trial in setting.trials:
            idx = setting.gallery_indices(trial, len(g_pids_all))
            g_feat = g_all[torch.from_numpy(idx).to(g_all.device)]
            dist: FeatureDistances | torch.Tensor = FeatureDistances(q_feat, g_feat, distance,
                                                                     norm)
            if cfg.TEST.RERANK:
                if setting.query not in self_dist:
                    self_dist[setting.query] = feature_distance(q_feat, q_feat, distance, norm)
                dist = k_reciprocal_rerank(dist.full(), self_dist[setting.query],
                                           feature_distance(g_feat, g_feat, distance, norm),
                                           cfg.TEST.RERANK_K1, cfg.TEST.RERANK_K2,
                                           cfg.TEST.RERANK_LAMBDA)
            cmc, m_ap, m_inp = evaluate_ranking(dist, q_pids, g_pids_all[idx], q_cams,
                                                g_cams_all[idx], setting.rule,
                                                cfg.TEST.MAX_RANK)
            entry["trials"].append({"trial": trial, "query": len(q_pids), "gallery": len(idx),
                                    **figures(cmc, m_ap, m_inp)})
            if log is not None and len(setting.trials) > 1:
                row = entry["trials"][-1]
                log(f"  {setting.name} trial {trial}: R1 {row['R1']:.2f} mAP {row['mAP']:.2f}")
        entry["gallery"] = entry["trials"][0]["gallery"]
        out[setting.name] = summarize(entry)
    return out


def check_settings(cfg: CfgNode, settings: Sequence[Setting],
                   sets: dict[str, list[ImageRecord]]) -> None:
    """Refuse, before any feature is extracted, what the evaluation could not finish.

    Raises:
        UserError: TEST.RERANK with a query + gallery beyond re-ranking's size limit.
    """
    if cfg.TEST.RERANK:
        for setting in settings:
            for trial in setting.trials:
                gallery = setting.gallery_indices(trial, len(sets[setting.gallery]))
                check_rerank_size(len(sets[setting.query]), len(gallery))


def evaluation_settings(cfg: CfgNode, dataset: VIReIDDataset, split: str = "test",
                        **kwargs: Any) -> tuple[list[Setting], dict[str, Any],
                                                dict[str, list[ImageRecord]]]:
    """The settings, protocol info and record lists of ``dataset``'s ``split``, checked
    (:func:`check_settings`); ``kwargs`` go to the dataset's ``settings``."""
    sets = dataset.eval_sets(split)
    settings, info = dataset.settings(cfg, sets, split=split, **kwargs)
    check_settings(cfg, settings, sets)
    return settings, info, sets


def extract_sets(cfg: CfgNode, model: nn.Module, sets: dict[str, list[ImageRecord]],
                 device: torch.device, split: str = "test") -> dict[str, torch.Tensor]:
    """Features of every record list, extracted once: ``{name: (N, D) float32}``."""
    return {name: extract_record_features(cfg, model, records, device, f"{split}-{name}")
            for name, records in sets.items()}


def run_evaluation(cfg: CfgNode, model: nn.Module, dataset: VIReIDDataset, *,
                   split: str = "test", trials: Sequence[int] | None = None,
                   monitor: bool = False, options: dict[str, Any] | None = None,
                   device: torch.device | None = None, log: Log | None = None) -> Evaluation:
    """Evaluate ``model`` with the protocol of ``dataset``; keep the features and settings.

    Args:
        cfg: the configuration (DATA.* for the loader, TEST.* for the protocol).
        model: eval-mode ``model(img, modality)`` returns (B, D) features.
        dataset: a reader from ``data.build_dataset`` (test lists are enough).
        split: ``test`` or ``val`` (identities held out of training).
        trials: gallery trials (1-based); default the protocol's.
        monitor: only the settings the dataset computes during training.
        options: the dataset's protocol options (e.g. SYSU-MM01 ``modes``, ``shots``).
        device: where to run; default the model's device.
        log: called with progress lines (per-trial figures), if given.
    """
    device = device or next(model.parameters()).device
    settings, info, sets = evaluation_settings(cfg, dataset, split, trials=trials,
                                               monitor=monitor, **(options or {}))
    feats = extract_sets(cfg, model, sets, device, split)
    results = assemble(cfg, dataset.name, split, info,
                       evaluate_features(cfg, settings, feats, sets, log),
                       expanded=getattr(model, "views", 1) > 1)
    return Evaluation(results, settings, sets, feats)


def evaluate(cfg: CfgNode, model: nn.Module, dataset: VIReIDDataset, **kwargs: Any
             ) -> dict[str, Any]:
    """The results dict of :func:`run_evaluation` (same arguments), figures in %."""
    return run_evaluation(cfg, model, dataset, **kwargs).results


def assemble(cfg: CfgNode, dataset_name: str, split: str, info: dict[str, Any],
             settings: dict[str, dict[str, Any]], expanded: bool = False) -> dict[str, Any]:
    """The results dict: protocol description, settings and headline (``expanded``: the
    network stacks several embeddings per image, so TEST.VIEWS applies)."""
    test = cfg.TEST
    rerank = ({"k1": cfg.TEST.RERANK_K1, "k2": cfg.TEST.RERANK_K2,
               "lambda": cfg.TEST.RERANK_LAMBDA} if cfg.TEST.RERANK else False)
    # Which embeddings: only a network that expands them has a choice (None otherwise).
    views = test.VIEWS if expanded else None
    protocol = {**info, "feature": test.FEAT, "views": views, "norm_each": test.NORM_EACH,
                "part_weights": list(test.PART_WEIGHTS),
                "norm": test.NORM, "distance": test.DISTANCE, "flip": test.FLIP,
                "rerank": rerank, "max_rank": test.MAX_RANK}
    results = {"dataset": dataset_name, "split": split, "protocol": protocol,
               "settings": settings}
    results["headline"] = headline(results)
    return results


def describe_protocol(results: dict[str, Any]) -> str:
    """One line: dataset, split, feature processing and the dataset's own variant."""
    p = results["protocol"]
    rerank = p["rerank"]
    parts = [f"{results['dataset']} {results['split']}: feature {p['feature']}"
             + (f" of {p['views']} embeddings" if p.get("views") else ""),
             *(["each part L2-normalised"] if p.get("norm_each") else []),
             *(["pooled / BN parts weighted " + " / ".join(f"{w:g}" for w in p["part_weights"])]
               if p.get("part_weights", [1.0, 1.0]) != [1.0, 1.0] else []),
             "L2-normalised" if p["norm"] else "not normalised", f"{p['distance']} distance",
             f"flip {'yes' if p['flip'] else 'no'}",
             (f"re-ranking k1={rerank['k1']} k2={rerank['k2']} lambda={rerank['lambda']}"
              if rerank else "no re-ranking")]
    own = DATASETS[results["dataset"]].describe_protocol(p)
    return "; ".join(parts + ([own] if own else []))


def format_tables(results: dict[str, Any]) -> str:
    """A protocol line, then one table per setting: a row per trial (when several)
    and mean / std, in %."""
    lines = [describe_protocol(results), ""]
    for name, entry in results["settings"].items():
        cols = [k for k in entry["mean"]]
        trials = entry["trials"]
        sizes = f"query {entry['query']}, gallery {entry['gallery']}"
        lines.append(f"{name} ({sizes}, {len(trials)} trial{'s' * (len(trials) > 1)})")
        lines.append("  " + f"{'trial':>6}" + "".join(f"{c:>8}" for c in cols))
        if len(trials) > 1:
            for row in trials:
                lines.append("  " + f"{row['trial']:>6}" + "".join(f"{row[c]:8.2f}"
                                                                   for c in cols))
            lines.append("  " + f"{'mean':>6}" + "".join(f"{entry['mean'][c]:8.2f}"
                                                         for c in cols))
            lines.append("  " + f"{'std':>6}" + "".join(f"{entry['std'][c]:8.2f}"
                                                        for c in cols))
        else:
            lines.append("  " + f"{trials[0]['trial']:>6}" + "".join(
                f"{entry['mean'][c]:8.2f}" for c in cols))
        lines.append("")
    return "\n".join(lines).rstrip("\n")
