"""The reproduction report: two readings of every run, their spread and the published target.

Each run is read twice at the dataset's headline setting:

- ``last``: the figures of ``results.json`` (the checkpoint TRAIN.SELECT kept:
  the last epoch by default);
- ``best_on_test``: the best epoch on the *test set* among the periodic
  evaluations (TRAIN.EVAL_PERIOD) in the run's ``metrics.jsonl`` and the final
  test, by R1. This is the papers' habit (their scripts keep the best test
  epoch); the difference between the two readings is how much of a figure is
  selection. It is unavailable when the periodic evaluations ran on a
  validation split or not at all.

Figures are means over all runs (seeds x trials) with the sample standard
deviation (ddof 1).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from yacs.config import CfgNode

from data import DATASETS
from engine.targets import target_record

FIGURES = ("R1", "mAP", "mINP")
READINGS = {
    "last": "{kept}",
    "best_on_test": "best epoch on the test set among the periodic evaluations and the final "
                    "test: the papers' habit, selected on the test set",
}


def _figures(source: dict[str, Any]) -> dict[str, float]:
    return {k: float(source[k]) for k in FIGURES if k in source}


def read_evals(folder: Path) -> dict[int, dict[str, Any]]:
    """``{epoch: eval record}`` of a run's ``metrics.jsonl`` (the last line of an epoch wins;
    a line cut by a kill is skipped)."""
    path = folder / "metrics.jsonl"
    out: dict[int, dict[str, Any]] = {}
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and rec.get("eval"):
            out[int(rec["epoch"])] = rec["eval"]
    return out


def best_on_test(folder: Path, results: dict[str, Any]
                 ) -> tuple[dict[str, Any] | None, str]:
    """The best-epoch-on-test reading of a run, or None with the reason.

    Returns:
        (``{"epoch", "R1", "mAP", "mINP"}`` or None, a note saying what it was chosen
        from).
    """
    setting = results["headline"]["setting"]
    evals = read_evals(folder)
    on_test = {e: ev[setting] for e, ev in evals.items()
               if ev.get("split") == "test" and setting in ev}
    if not on_test:
        if evals:
            return None, ("unavailable: the periodic evaluations ran on the validation split, "
                          "not the test set")
        return None, "unavailable: no periodic evaluation (TRAIN.EVAL_PERIOD 0)"
    candidates = {e: _figures(f) for e, f in on_test.items()}
    final = results.get("selection", {}).get("epoch")
    if results.get("split") == "test" and final is not None:
        candidates.setdefault(int(final), _figures(results["headline"]))
    # Highest R1; the earliest epoch among equals.
    epoch = max(sorted(candidates), key=lambda e: candidates[e]["R1"])
    return ({"epoch": epoch, **candidates[epoch]},
            f"best of epochs {', '.join(map(str, sorted(candidates)))}")


def spread(rows: Sequence[dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """``{"mean": {..}, "std": {..}}`` over rows (sample std; None for one row)."""
    names = [k for k in FIGURES if all(k in r for r in rows)]
    values = {k: np.array([r[k] for r in rows], dtype=np.float64) for k in names}
    return {"mean": {k: round(float(v.mean()), 4) for k, v in values.items()},
            "std": {k: round(float(v.std(ddof=1)), 4) if len(v) > 1 else None
                    for k, v in values.items()}}


def build_report(cfg: CfgNode, recipe: str,
                 runs: Sequence[tuple[int, int | None, Path, dict[str, Any]]]
                 ) -> dict[str, Any]:
    """The report dict from every finished run: (seed, trial, folder, results)."""
    first = runs[0][3]
    setting = first["headline"]["setting"]
    rows = []
    for seed, trial, folder, results in runs:
        best, note = best_on_test(folder, results)
        rows.append({"seed": seed, "trial": trial, "folder": str(folder),
                     "last": {"epoch": results["selection"]["epoch"],
                              **_figures(results["headline"])},
                     "best_on_test": best, "best_on_test_note": note,
                     "commit": results.get("environment", {}).get("git", {}).get("commit")})
    selection = first["selection"]
    readings: dict[str, Any] = {}
    for name, label in READINGS.items():
        got = [r[name] for r in rows if r[name] is not None]
        kept = ("last epoch: the checkpoint TRAIN.SELECT last keeps, our default"
                if selection["select"] == "last" else
                f"the checkpoint TRAIN.SELECT {selection['select']} keeps ({selection['note']})")
        entry: dict[str, Any] = {"label": label.format(kept=kept),
                                 "runs": len(got)}
        if len(got) == len(rows):
            entry.update(spread(got))
            entry["target"] = target_record(
                cfg, {"dataset": first["dataset"],
                      "headline": {"setting": setting, **entry["mean"]}})
        else:
            entry["note"] = next(r["best_on_test_note"] for r in rows if r[name] is None)
        readings[name] = entry
    fp = first.get("dataset_fingerprint")
    warnings = sorted({w for _, _, _, res in runs
                       for w in (res.get("dataset_fingerprint") or {}).get("warnings", [])})
    return {"recipe": recipe, "dataset": first["dataset"],
            "dataset_label": DATASETS[first["dataset"]].label, "setting": setting,
            "output_path": cfg.TRAIN.OUTPUT_PATH,
            "seeds": sorted({r["seed"] for r in rows}),
            "trials": sorted({r["trial"] for r in rows if r["trial"] is not None}),
            "std": "sample (ddof=1) over all runs, in percent",
            "target_source": cfg.TARGET.SOURCE or None,
            "readings": readings, "runs": rows,
            "commits": sorted({str(r["commit"]) for r in rows}),
            "environment": first.get("environment"), "dataset_fingerprint": fp,
            "dataset_warnings": warnings}


def _pm(entry: dict[str, Any], k: str) -> str:
    if k not in entry.get("mean", {}):
        return "–"
    std = entry["std"][k]
    return f"{entry['mean'][k]:.2f} ± {std:.2f}" if std is not None else f"{entry['mean'][k]:.2f}"


def _cells(row: dict[str, Any] | None) -> list[str]:
    if row is None:
        return ["–"] * (len(FIGURES) + 1)
    return [str(row["epoch"])] + [f"{row[k]:.2f}" if k in row else "–" for k in FIGURES]


def format_report(report: dict[str, Any]) -> str:
    """``report.md``: summary table, target, runs, environment and dataset."""
    readings = report["readings"]
    n = len(report["runs"])
    trials = (f", trials {', '.join(map(str, report['trials']))} (one model each)"
              if report["trials"] else "")
    lines = [f"# Reproduction of `{report['recipe']}`", "",
             f"{report['dataset_label']}, headline setting **{report['setting']}**; "
             f"seeds {', '.join(map(str, report['seeds']))} (TRAIN.SEED){trials}: {n} runs in "
             f"`{report['output_path']}`. Figures in %, mean ± sample std over the {n} runs.",
             "", f"| reading | runs | {' | '.join(FIGURES)} |",
             "|---|---|" + "---|" * len(FIGURES)]
    for entry in readings.values():
        lines.append(f"| {entry['label']} | {entry['runs']} | "
                     + " | ".join(_pm(entry, k) for k in FIGURES) + " |")
    notes = [f"- {name}: {e['note']}" for name, e in readings.items() if "note" in e]
    lines += ([""] + notes if notes else []) + ["", "## Target", ""]
    targets = {name: e.get("target") for name, e in readings.items() if e.get("target")}
    if not report["target_source"]:
        lines.append("No published target: TARGET.SOURCE is empty.")
    elif not targets:
        lines.append(f"{report['target_source']}: no comparison (the target's setting or "
                     "dataset is not this headline's).")
    else:
        any_t = next(iter(targets.values()))
        lines += [f"{any_t['source']}, {any_t['setting']}.", "",
                  "| reading | " + " | ".join(f"{k} target / obtained / difference"
                                              for k in any_t["figures"]) + " |",
                  "|---|" + "---|" * len(any_t["figures"])]
        for name, t in targets.items():
            lines.append(f"| {name} | " + " | ".join(
                f"{f['target']:.2f} / {f['obtained']:.2f} / {f['difference']:+.2f}"
                for f in t["figures"].values()) + " |")
    lines += ["", "## Runs", "",
              "| seed | trial | last: epoch | " + " | ".join(FIGURES)
              + " | best on test: epoch | " + " | ".join(FIGURES) + " |",
              "|---" * (4 + 2 * len(FIGURES)) + "|"]
    for r in report["runs"]:
        trial = str(r["trial"]) if r["trial"] is not None else "–"
        lines.append(f"| {r['seed']} | {trial} | " + " | ".join(_cells(r["last"])) + " | "
                     + " | ".join(_cells(r["best_on_test"])) + " |")
    lines += ["", "## Environment", ""]
    env = report["environment"]
    if env:
        gpus = ", ".join(env["gpus"]) or "none"
        prec = ", ".join(f"{k} {v}" for k, v in env["precision"].items())
        git = env["git"]
        lines += [f"- Python {env['python']}, torch {env['torch']}, torchvision "
                  f"{env['torchvision']}, CUDA {env['cuda']}, cuDNN {env['cudnn']}",
                  f"- GPUs: {env['gpu_count']} ({gpus}); precision: {prec}; "
                  f"TRAIN.DETERMINISTIC {'yes' if env['deterministic'] else 'no'}",
                  f"- code: commit {git['commit']}"
                  + (" with local changes" if git["local_changes"] else "")
                  + (f"; the runs used commits {', '.join(report['commits'])}"
                     if len(report["commits"]) > 1 else "")]
    else:
        lines.append("Not recorded (runs made before results recorded their environment).")
    lines += ["", "## Dataset", ""]
    fp = report["dataset_fingerprint"]
    if fp:
        for name, s in fp["splits"].items():
            cams = "; ".join(f"{m} " + " ".join(f"cam{c}:{v}" for c, v in s[m]["cameras"].items())
                             for m in ("visible", "infrared"))
            lines.append(f"- {name}: {s['ids']} ids, {s['visible']['images']} visible + "
                         f"{s['infrared']['images']} infrared images ({cams})")
        lines += [f"- {fp['image_files']['count']} image files, sha256 of the sorted list "
                  f"`{fp['image_files']['sha256']}`",
                  f"- {len(fp['split_files']['files'])} split/id files, sha256 "
                  f"`{fp['split_files']['sha256']}`"]
        checked = fp["official"]
        if checked:
            same = sum(c["copy"] == c["release"] for c in checked)
            lines.append(f"- official release: {same} of {len(checked)} counts agree")
    lines += [f"- warning: {w}" for w in report["dataset_warnings"]]
    return "\n".join(lines) + "\n"
