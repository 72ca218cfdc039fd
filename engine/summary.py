"""The table of several split trials (one model each, as RegDB's): mean ± std per setting."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

SUMMARY_METRICS = ("R1", "R10", "R20", "mAP", "mINP")


def summary_table(merged: Mapping[str, Any], metrics: Sequence[str] = SUMMARY_METRICS) -> dict:
    """``{direction: {metric: {"mean": m, "std": s, "values": [per trial]}}}`` from the
    results of :func:`engine.tester.merge_split_trials` (percentages, sample std)."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for direction, entry in merged["settings"].items():
        table[direction] = {m: {"mean": entry["mean"][m], "std": entry["std"][m],
                                "values": [t[m] for t in entry["trials"]]}
                            for m in metrics if m in entry["mean"]}
    return table


def format_summary(table: Mapping[str, Mapping[str, Mapping[str, float]]],
                   trials: Sequence[int], title: str) -> str:
    """Plain text: one row per direction, ``mean ± std`` per metric."""
    metrics = list(next(iter(table.values()), {}))
    rows = [["direction", *metrics]]
    for direction, figs in table.items():
        rows.append([direction] + [f"{figs[m]['mean']:.2f} ± {figs[m]['std']:.2f}"
                                   for m in metrics])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [title, f"trials {', '.join(map(str, trials))}: mean ± sample standard "
                    "deviation over trials, in percent", ""]
    for r in rows:
        lines.append("  ".join([r[0].ljust(widths[0])]
                               + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]))
    return "\n".join(lines) + "\n"
