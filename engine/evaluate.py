"""Run a dataset's evaluation protocol on a model and report its figures.

``evaluate(cfg, model, dataset)`` extracts every feature set once, runs each
setting of the protocol (every trial's gallery indexes the precomputed
features) and returns a JSON-serialisable dict::

    {"dataset": "sysumm", "split": "test",
     "protocol": {"gallery_sampling": "official", "perm_path": ..., "feature": "bn", ...},
     "settings": {"all-search single-shot": {
         "query": 3803, "gallery": 301, "rule": "sysu",
         "trials": [{"trial": 1, "query": .., "gallery": .., "R1": .., ..., "cmc": [..]}, ..],
         "mean": {"R1": .., "R5": .., "R10": .., "R20": .., "mAP": .., "mINP": ..},
         "std": {...}}, ...},
     "headline": {"setting": "all-search single-shot", "R1": .., "mAP": .., "mINP": ..}}

Figures are percentages; ``std`` is the sample standard deviation over trials
(0 for a single trial).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from data.base import ImageRecord
from engine.inference import extract_record_features, pairwise_distance
from engine.protocols import (
    SYSU_SEARCH_CAMS,
    SYSU_SHOTS,
    Setting,
    llcm_settings,
    regdb_settings,
    resolve_sysu_gallery,
    sysu_settings,
)
from utils.errors import UserError
from utils.metrics import evaluate_ranking
from utils.rerank import k_reciprocal_rerank

RANKS = (1, 5, 10, 20)
FIGURES = ("mAP", "mINP")

Log = Callable[[str], None]


def evaluation_sets(dataset: Any, split: str = "test") -> dict[str, list[ImageRecord]]:
    """The record lists a dataset's protocol extracts features of, by name.

    Args:
        dataset: a reader from ``data.build_dataset``.
        split: ``test``, or ``val`` (SYSU-MM01 with the val ids held out).

    Raises:
        UserError: ``val`` asked of a dataset without a held-out val split.
    """
    name = dataset.name
    if split == "val":
        if name != "sysumm" or not getattr(dataset, "val_query", None):
            raise UserError(f"{name}: no held-out val split (only SYSU-MM01 with "
                            "DATA.SYSU_VAL_AS_TRAIN = no has one)")
        return {"query": dataset.val_query, "gallery": dataset.val_gallery_pool}
    if name == "sysumm":
        return {"query": dataset.query, "gallery": dataset.gallery_pool}
    if name == "regdb":
        return {"visible": dataset.test_visible, "thermal": dataset.test_thermal}
    if name == "llcm":
        return {"visible": dataset.test_vis, "infrared": dataset.test_nir}
    raise ValueError(f"no evaluation protocol for dataset {name!r}")


def build_settings(cfg: CfgNode, dataset: Any, sets: dict[str, list[ImageRecord]],
                   trials: Sequence[int] | None = None, modes: Sequence[str] | None = None,
                   shots: Sequence[int] | None = None) -> tuple[list[Setting], dict[str, Any]]:
    """The settings of the dataset's protocol and a description of the variant.

    Args:
        cfg: TEST.GALLERY, TEST.PERM_PATH and TEST.NUM_TRIALS (SYSU-MM01, LLCM)
            and DATA.TRIAL (RegDB) apply.
        dataset: the reader (its ``name`` and ``root``).
        sets: from :func:`evaluation_sets`.
        trials: gallery trials (1-based) for SYSU-MM01 / LLCM; default 1..TEST.NUM_TRIALS.
        modes, shots: SYSU-MM01 subsets (default all, indoor x 1, 10).
    """
    trials = tuple(trials or range(1, cfg.TEST.NUM_TRIALS + 1))
    info: dict[str, Any] = {}
    if dataset.name == "sysumm":
        method, perm = resolve_sysu_gallery(cfg.TEST.GALLERY, cfg.TEST.PERM_PATH, dataset.root)
        info.update(gallery_sampling=method, perm_path=perm.path if perm else None,
                    gallery_trials=list(trials),
                    trial_note=("trial t = row t of rand_perm_cam" if perm else
                                "trial t = random.seed(t - 1), AGW family's sampling"))
        settings = sysu_settings(sets["gallery"], modes or tuple(SYSU_SEARCH_CAMS),
                                 shots or SYSU_SHOTS, trials, method, perm)
    elif dataset.name == "regdb":
        info.update(regdb_trial=cfg.DATA.TRIAL)
        settings = regdb_settings(cfg.DATA.TRIAL)
    else:
        info.update(gallery_sampling="random", gallery_trials=list(trials),
                    trial_note="trial t = random.seed(t - 1)")
        settings = llcm_settings(sets["visible"], sets["infrared"], trials)
    return settings, info


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
    """The first setting's mean figures (SYSU all-search single-shot, RegDB visible-to-
    thermal, LLCM infrared-to-visible when evaluated)."""
    name, entry = next(iter(results["settings"].items()))
    return {"setting": name, **{k: entry["mean"][k] for k in ("R1", "mAP", "mINP")
                                if k in entry["mean"]}}


def evaluate_features(cfg: CfgNode, settings: Sequence[Setting],
                      feats: dict[str, torch.Tensor], sets: dict[str, list[ImageRecord]],
                      log: Log | None = None) -> dict[str, dict[str, Any]]:
    """Run every setting and trial on precomputed features.

    Args:
        cfg: TEST.NORM, TEST.DISTANCE, TEST.RERANK* and TEST.MAX_RANK apply.
        settings: from :func:`build_settings`.
        feats: (N_name, D) features per set name (rows in record order).
        sets: the record lists per set name.

    Returns:
        ``{setting name: entry}`` as in the module docstring.
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
        if cfg.TEST.RERANK and setting.query not in self_dist:
            self_dist[setting.query] = pairwise_distance(q_feat, q_feat, distance, norm)
        entry: dict[str, Any] = {"query": len(q_pids), "rule": setting.rule, "trials": []}
        for trial in setting.trials:
            idx = (np.arange(len(g_pids_all)) if setting.sample is None
                   else setting.sample(trial))
            g_feat = g_all[torch.from_numpy(idx).to(g_all.device)]
            dist = pairwise_distance(q_feat, g_feat, distance, norm)
            if cfg.TEST.RERANK:
                g_g = pairwise_distance(g_feat, g_feat, distance, norm)
                dist = k_reciprocal_rerank(dist, self_dist[setting.query], g_g,
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


def extract_sets(cfg: CfgNode, model: nn.Module, sets: dict[str, list[ImageRecord]],
                 device: torch.device, split: str = "test") -> dict[str, torch.Tensor]:
    """Features of every record list, extracted once: ``{name: (N, D) float32}``."""
    return {name: extract_record_features(cfg, model, records, device, f"{split}-{name}")
            for name, records in sets.items()}


def evaluate(cfg: CfgNode, model: nn.Module, dataset: Any, *, split: str = "test",
             trials: Sequence[int] | None = None, modes: Sequence[str] | None = None,
             shots: Sequence[int] | None = None, device: torch.device | None = None,
             log: Log | None = None) -> dict[str, Any]:
    """Evaluate ``model`` with the protocol of ``dataset`` (see the module docstring).

    Args:
        cfg: the configuration (DATA.* for the loader, TEST.* for the protocol).
        model: eval-mode ``model(img, modality)`` returns (B, D) features.
        dataset: a reader from ``data.build_dataset`` (test lists are enough).
        split: ``test`` or ``val`` (SYSU-MM01 with held-out val ids).
        trials, modes, shots: restrict the protocol (see :func:`build_settings`).
        device: where to run; default the model's device.
        log: called with progress lines (per-trial figures), if given.

    Returns:
        The results dict, figures in %.
    """
    device = device or next(model.parameters()).device
    sets = evaluation_sets(dataset, split)
    settings, info = build_settings(cfg, dataset, sets, trials, modes, shots)
    feats = extract_sets(cfg, model, sets, device, split)
    return assemble(cfg, dataset.name, split, info,
                    evaluate_features(cfg, settings, feats, sets, log))


def assemble(cfg: CfgNode, dataset_name: str, split: str, info: dict[str, Any],
             settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The results dict: protocol description, settings and headline."""
    test = cfg.TEST
    rerank = ({"k1": cfg.TEST.RERANK_K1, "k2": cfg.TEST.RERANK_K2,
               "lambda": cfg.TEST.RERANK_LAMBDA} if cfg.TEST.RERANK else False)
    protocol = {**info, "feature": test.FEAT, "norm": test.NORM, "distance": test.DISTANCE,
                "flip": test.FLIP, "rerank": rerank, "max_rank": test.MAX_RANK}
    results = {"dataset": dataset_name, "split": split, "protocol": protocol,
               "settings": settings}
    results["headline"] = headline(results)
    return results


def describe_protocol(results: dict[str, Any]) -> str:
    """One line: dataset, split, feature processing and (where sampled) the gallery."""
    p = results["protocol"]
    rerank = p["rerank"]
    parts = [f"{results['dataset']} {results['split']}: feature {p['feature']}",
             "L2-normalised" if p["norm"] else "not normalised", f"{p['distance']} distance",
             f"flip {'yes' if p['flip'] else 'no'}",
             (f"re-ranking k1={rerank['k1']} k2={rerank['k2']} lambda={rerank['lambda']}"
              if rerank else "no re-ranking")]
    if "gallery_sampling" in p:
        source = f" ({p['perm_path']})" if p.get("perm_path") else ""
        parts.append(f"gallery {p['gallery_sampling']}{source}, {p['trial_note']}")
    if "regdb_trial" in p:
        trials = p["regdb_trial"]
        parts.append(f"RegDB trials {', '.join(map(str, trials))}, one model each"
                     if isinstance(trials, list) else f"RegDB trial {trials}")
    return "; ".join(parts)


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
