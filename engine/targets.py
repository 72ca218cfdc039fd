"""The recipe's published figures (config section TARGET) against the figures obtained.

A recipe states where its target comes from (TARGET.SOURCE), the headline
setting it is for (TARGET.SETTING) and the published R1 / mAP / mINP (-1 =
not published). The comparison is made only when it means something: a source
is given, the model was tested on the dataset it was trained on, and the
target's setting was evaluated (the headline, or another the paper reports).
"""
from __future__ import annotations

from typing import Any

from yacs.config import CfgNode


def target_record(cfg: CfgNode, results: dict[str, Any], trained_on: str | None = None
                  ) -> dict[str, Any] | None:
    """The ``target`` record of a results dict, or None when no comparison applies.

    Args:
        cfg: the config whose TARGET section holds the published figures.
        results: with ``dataset`` and ``headline`` (``{"setting", "R1", "mAP", ...}``,
            means over trials, in %).
        trained_on: the dataset the model was trained on (default: the tested one).

    Returns:
        ``{"source", "setting", "figures": {name: {"target", "obtained", "difference"}}}``
        (difference = obtained - target, in points) for the published figures the
        results have.
    """
    target = cfg.TARGET
    if not target.SOURCE or (trained_on or results["dataset"]) != results["dataset"]:
        return None
    entry = results.get("settings", {}).get(target.SETTING)
    if entry is not None:
        head = entry["mean"]
    elif results.get("headline", {}).get("setting") == target.SETTING:
        head = results["headline"]
    else:  # the target's setting was not evaluated (e.g. --mode indoor)
        return None
    figures = {}
    for name, published in (("R1", target.R1), ("mAP", target.MAP), ("mINP", target.MINP)):
        if published >= 0 and name in head:
            obtained = float(head[name])
            figures[name] = {"target": float(published), "obtained": round(obtained, 4),
                             "difference": round(obtained - published, 4)}
    if not figures:
        return None
    return {"source": target.SOURCE, "setting": target.SETTING, "figures": figures}


def format_target(record: dict[str, Any]) -> str:
    """One line, e.g. ``target (DEEN, CVPR 2023, Tab. 2), visible-to-thermal: R1 88.30
    vs 91.10 (-2.80), mAP ...``."""
    parts = [f"{name} {f['obtained']:.2f} vs {f['target']:.2f} ({f['difference']:+.2f})"
             for name, f in record["figures"].items()]
    return (f"target ({record['source']}), {record['setting']}: obtained vs published: "
            + ", ".join(parts))
