"""Reproduce a recipe over seeds: train and test every (seed, split trial), then report.

``python tools/reproduce.py RECIPE --seeds N [--trial N|all] [KEY VALUE ...]``
trains the recipe with TRAIN.SEED 0..N-1, each into ``OUTPUT_PATH/seed_<s>/``
(``trial_<t>/`` inside for a dataset in fixed splits, one model per trial),
and writes ``report.md`` and ``report.json`` into TRAIN.OUTPUT_PATH
(:mod:`engine.report`). A run whose ``results.json`` exists is not trained
again; one that stopped midway resumes from its ``last.pth`` (as ``--resume``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from yacs.config import CfgNode

from data import DATASETS
from engine.cli import AUTO, parse_trials
from engine.distributed import init_distributed, shutdown_distributed
from engine.launch import resolve_resume, train_and_test
from engine.report import build_report, format_report
from utils.cli import Parser
from utils.config import config_from_ini_text, load_config, with_values
from utils.errors import UserError
from utils.io import atomic_write_text

log = logging.getLogger("engine")

REPORT_FILES = ("report.md", "report.json")


@dataclass
class Run:
    """One trained model of the reproduction.

    Attributes:
        seed: TRAIN.SEED.
        trial: the split trial (None for a dataset in one split).
        cfg: the run's config (seed, trial and run folder set).
    """

    seed: int
    trial: int | None
    cfg: CfgNode

    @property
    def folder(self) -> Path:
        return Path(self.cfg.TRAIN.OUTPUT_PATH)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/reproduce.py``."""
    p = Parser(
        prog="tools/reproduce.py",
        examples=["python tools/reproduce.py configs/demo_synthetic.ini --seeds 3 --trial all"],
        description="Train and test a recipe over several seeds (and split trials), then "
                    "write report.md and report.json into its TRAIN.OUTPUT_PATH: the "
                    "figures of every run at the last epoch and at its best epoch on the "
                    "test set, mean ± sample std, the published target, the environment "
                    "and the dataset fingerprint. Finished runs are not trained again.",
        notes="Overrides are KEY VALUE pairs after the options, as in train.py.")
    p.add_argument("recipe", help="the .ini configuration file")
    p.add_argument("--seeds", required=True, metavar="N",
                   help="number of seeds: TRAIN.SEED 0..N-1")
    p.add_argument("--trial", default=None, metavar="N|N,M,..|all",
                   help="split trials of a dataset in fixed splits (RegDB), one model each "
                        "(default: DATA.TRIAL; all = every split)")
    p.usage = "%(prog)s RECIPE --seeds N [--trial N|N,M,..|all] [KEY VALUE ...]"
    return p


def parse_seeds(text: str) -> int:
    """``--seeds``: a positive integer.

    Raises:
        UserError: anything else.
    """
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"--seeds {text}: expected a positive integer (the number of seeds, "
                        "run as TRAIN.SEED 0..N-1)")
    return int(text)


def check_report_path(root: Path) -> None:
    """Refuse, before any training, a TRAIN.OUTPUT_PATH where the report cannot be written.

    Raises:
        UserError: the folder cannot be created or written, or a report name is taken by
            something that is not a file.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".report.", suffix=".tmp", dir=root)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"TRAIN.OUTPUT_PATH {root}: cannot write the report there "
                        f"({exc.strerror or exc})") from None
    for name in REPORT_FILES:
        if (root / name).exists() and not (root / name).is_file():
            raise UserError(f"{root / name}: cannot write the report (not a file)")


def plan_runs(cfg: CfgNode, seeds: int, trial: str | None) -> list[Run]:
    """Every (seed, trial) run with its config, in training order."""
    root = Path(cfg.TRAIN.OUTPUT_PATH)
    splits = DATASETS[cfg.DATA.DATASET_NAME].split_trials
    if trial is not None and not splits:
        raise UserError(f"--trial selects the train/test split of a dataset in fixed splits; "
                        f"{DATASETS[cfg.DATA.DATASET_NAME].label} has one split")
    trials: list[int | None] = list(parse_trials(trial, splits) or [cfg.DATA.TRIAL]) \
        if splits else [None]
    runs = []
    for s in range(seeds):
        for t in trials:
            folder = root / f"seed_{s}" / (f"trial_{t}" if t is not None else "")
            values: dict[str, Any] = {"TRAIN__SEED": s, "TRAIN__OUTPUT_PATH": str(folder)}
            if t is not None:
                values["DATA__TRIAL"] = t
            runs.append(Run(s, t, with_values(cfg, **values)))
    return runs


def finished(run: Run) -> dict[str, Any] | None:
    """The run's results when it is finished with the same config, else None.

    Raises:
        UserError: its results.json was made with another config (the recipe or the
            overrides changed since): mixing them would report two recipes as one.
    """
    path = run.folder / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        saved = config_from_ini_text(str(results["config"]), where=f"{path} (config)")
    except (ValueError, KeyError, TypeError, UserError):
        raise UserError(f"{path}: not a results file of this project; remove it to train "
                        "that run again") from None
    # TARGET only labels the report: a recipe that gains its published figures keeps its runs.
    diffs = [f"{s}.{k} = {saved[s][k]!r}, now {run.cfg[s][k]!r}" for s in run.cfg
             if s != "TARGET" for k in run.cfg[s] if saved[s][k] != run.cfg[s][k]]
    if diffs:
        raise UserError(f"{path} was made with another config ({diffs[0]}): use another "
                        "TRAIN.OUTPUT_PATH or remove that run folder")
    return results


def reproduce(cfg: CfgNode, seeds: int, trial: str | None, recipe: str) -> dict[str, Any]:
    """Train what is not finished, then write the report.

    Returns:
        The report dict (also in report.json).
    """
    root = Path(cfg.TRAIN.OUTPUT_PATH)
    check_report_path(root)
    runs = plan_runs(cfg, seeds, trial)
    todo = [r for r in runs if finished(r) is None]
    done = len(runs) - len(todo)
    print(f"{len(runs)} runs ({seeds} seeds x {len(runs) // seeds} trials): {done} finished "
          f"and kept, {len(todo)} to train")
    if todo:
        info, device = init_distributed(cfg)
        try:
            for run in todo:
                where = f"seed {run.seed}" + (f" trial {run.trial}" if run.trial else "")
                print(f"training {where} into {run.folder}")
                train_and_test(run.cfg, resolve_resume(AUTO, run.cfg, optional=True), info,
                               device)
            if not info.is_main:
                return {}
        finally:
            shutdown_distributed()
    report = build_report(cfg, recipe, [(r.seed, r.trial, r.folder, finished(r))
                                        for r in runs])
    text = format_report(report)
    # JSON first: a reader of report.md can count on the JSON being as new.
    atomic_write_text(root / "report.json", json.dumps(report, indent=2) + "\n")
    atomic_write_text(root / "report.md", text)
    print(text, end="")
    print(f"report written to {root / 'report.md'} and {root / 'report.json'}")
    return report


def reproduce_main(argv: Sequence[str] | None = None) -> int:
    """The entry point of ``tools/reproduce.py``."""
    # The overrides may stand before or after the options: every word argparse does not
    # know is one, in order.
    args, opts = build_parser().parse_known_args(argv)
    opts = [o for o in opts if o != "--"]
    seeds = parse_seeds(args.seeds)
    if not Path(args.recipe).is_file():
        raise UserError(f"{args.recipe}: recipe file not found (expected a .ini "
                        "configuration file, such as those in configs/)")
    cfg = load_config(args.recipe, opts)
    reproduce(cfg, seeds, args.trial, args.recipe)
    return 0
