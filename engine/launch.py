"""What the training scripts do: one run = train, select, test with the dataset's protocol.

A dataset in fixed train/test splits (RegDB) trains one model per split
(``--trial``) into ``OUTPUT_PATH/trial_<n>/`` (several trials add
``summary.txt`` / ``summary.json``); any other dataset trains one model into
``OUTPUT_PATH``. Every run folder gets ``config.ini``, ``log.txt``,
``metrics.jsonl``, ``last.pth`` (``best.pth`` when selecting on val or test),
TensorBoard scalars and ``results.json``. ``train.py`` trains any registered
dataset; ``train_regdb.py``, ``train_sysumm.py`` and ``train_llcm.py`` are the
same with a check of the config's dataset.
"""
from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from yacs.config import CfgNode

import data
from data import DATASETS
from engine.cli import AUTO, parse_train_args, parse_trials, require_dataset, train_parser
from engine.distributed import (
    DistInfo,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from engine.evaluate import evaluate, evaluation_settings, format_tables
from engine.logger import close_logger, setup_logger
from engine.record import log_record, run_record
from engine.runtime import training_precision
from engine.selection import PURPOSE, periodic_evaluation
from engine.summary import format_summary, summary_table
from engine.targets import format_target, target_record
from engine.tester import merge_split_trials
from engine.trainer import Trainer
from utils.config import config_to_ini, with_values
from utils.errors import UserError
from utils.io import atomic_write_text

log = logging.getLogger("engine")


def resolve_resume(resume: str | None, cfg: CfgNode, optional: bool = False) -> Path | None:
    """``--resume`` -> checkpoint path (``auto`` = the run folder's last.pth).

    Args:
        optional: with ``auto``, a missing last.pth means a fresh start (several
            RegDB trials, some not begun yet) instead of an error.
    """
    if resume is None:
        return None
    if resume != AUTO:
        return Path(resume)
    path = Path(cfg.TRAIN.OUTPUT_PATH) / "last.pth"
    if path.is_file():
        return path
    if optional:
        return None
    raise UserError(f"--resume: no checkpoint to resume at {path} (TRAIN.OUTPUT_PATH); "
                    "give the checkpoint's path or start without --resume")


def train_and_test(cfg: CfgNode, resume: Path | None, info: DistInfo,
                   device: torch.device) -> dict[str, Any] | None:
    """Train one model into ``cfg.TRAIN.OUTPUT_PATH`` and test the selected checkpoint.

    Returns:
        On rank 0 the results dict also written to ``results.json``; None elsewhere.
    """
    out = Path(cfg.TRAIN.OUTPUT_PATH)
    setup_logger(out if info.is_main else None, info.rank)
    try:
        dataset = data.build_dataset(cfg, verbose=False)
        log.info(dataset.describe())
        evaluation_settings(cfg, dataset, "test")  # what the final test would refuse, now
        record = run_record(cfg, device, dataset, training_precision(cfg, device)) \
            if info.is_main else {}
        if record:
            log_record(record, log.info, log.warning)
        if resume is None and (out / "last.pth").is_file() and info.is_main:
            log.warning(f"{out} holds an earlier run: starting afresh replaces its checkpoints "
                        "and metrics (use --resume to continue it)")
        trainer = Trainer(cfg, dataset, device, info, periodic_evaluation(cfg, dataset, device))
        if resume is not None:
            trainer.resume(resume)
        else:
            trainer.metrics.truncate_after(0)
            if info.is_main:  # a best.pth of an earlier run must not pass for this run's
                (out / "best.pth").unlink(missing_ok=True)
        fit = trainer.fit()
        results = None
        if info.is_main:
            model = trainer.load_selected(fit)
            note = {"last": "final epoch", "val": PURPOSE["val"],
                    "test": PURPOSE["test"]}[cfg.TRAIN.SELECT]
            log.info(f"testing {fit.selected_path.name} (epoch {fit.selected_epoch}, "
                     f"selection: {cfg.TRAIN.SELECT}, {note})")
            with torch.no_grad():
                res = evaluate(cfg, model, dataset, split="test", device=device,
                               log=log.info)
            target = target_record(cfg, res)
            results = {"checkpoint": str(fit.selected_path),
                       "selection": {"select": cfg.TRAIN.SELECT, "epoch": fit.selected_epoch,
                                     "note": note, "best_metric": fit.best_metric},
                       **res, **record, **({"target": target} if target else {}),
                       "config": config_to_ini(cfg)}
            atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
            log.info(format_tables(res))
            if target:
                log.info(format_target(target))
            if cfg.TRAIN.SELECT == "test":
                log.info("note: the checkpoint was selected on the test set")
            log.info(f"results written to {out / 'results.json'}")
        barrier()
        return results
    except UserError as exc:
        log.error(f"error: {exc}", extra={"file_only": True})
        raise
    finally:
        close_logger()


def script_parser(script: str, dataset: str | None, examples: Sequence[str] = ()
                  ) -> argparse.ArgumentParser:
    """The command line of a training script.

    Args:
        script: the script's name.
        dataset: the only dataset it trains, or None for any.
        examples: command lines its ``--help`` lists.
    """
    title = DATASETS[dataset].label if dataset else "any registered dataset"
    trials_flag = dataset is None or DATASETS[dataset].split_trials > 0
    return train_parser(script, title, trials=trials_flag, examples=examples)


def train_main(script: str, dataset: str | None, argv: Sequence[str] | None = None,
               examples: Sequence[str] = ()) -> int:
    """The training entry point: parse, then train (one model, or one per split trial).

    Args:
        script: the script's name, for messages.
        dataset: the only dataset this script trains, or None for any.
        argv: the command line (default ``sys.argv[1:]``).
        examples: command lines its ``--help`` lists.
    """
    args, cfg = parse_train_args(script_parser(script, dataset, examples), argv)
    if dataset is not None:
        require_dataset(cfg, (dataset,), script)
    splits = DATASETS[cfg.DATA.DATASET_NAME].split_trials
    trial = getattr(args, "trial", None)
    if trial is not None and not splits:
        raise UserError(f"--trial selects the train/test split of a dataset in fixed splits; "
                        f"{DATASETS[cfg.DATA.DATASET_NAME].label} has one split")
    info, device = init_distributed(cfg)
    try:
        if not splits:
            train_and_test(cfg, resolve_resume(args.resume, cfg), info, device)
        else:
            run_split_trials(cfg, parse_trials(trial, splits) or [cfg.DATA.TRIAL], args.resume,
                             info, device)
        return 0
    finally:
        shutdown_distributed()


def run_split_trials(cfg: CfgNode, trials: list[int], resume: str | None, info: DistInfo,
                     device: torch.device) -> dict[str, Any] | None:
    """One model per split trial into OUTPUT_PATH/trial_<n>/; several trials add the summary.

    Returns:
        On rank 0 with several trials, the summary dict (also in summary.json).
    """
    root = Path(cfg.TRAIN.OUTPUT_PATH)
    if resume not in (None, AUTO) and len(trials) > 1:
        raise UserError("--resume PATH names one checkpoint; with several trials use "
                        "--resume without a value (each trial's last.pth)")
    per_trial = []
    for t in trials:
        tcfg = with_values(cfg, DATA__TRIAL=t, TRAIN__OUTPUT_PATH=str(root / f"trial_{t}"))
        results = train_and_test(tcfg, resolve_resume(resume, tcfg, optional=len(trials) > 1),
                                 info, device)
        per_trial.append(results)
    if len(trials) < 2 or not info.is_main:
        return None
    merged = merge_split_trials(per_trial)
    merged.pop("target", None)  # the first trial's; the summary gets the mean's
    table = summary_table(merged)
    title = DATASETS[cfg.DATA.DATASET_NAME].label
    text = format_summary(table, trials, f"{title}, one model per trial ({root})")
    target = target_record(cfg, merged)
    if target:
        text += format_target(target) + "\n"
    summary = {"trials": trials, "checkpoints": [r["checkpoint"] for r in per_trial],
               "selection": per_trial[0]["selection"]["select"], "std": "sample (ddof=1)",
               "summary": table, "results": merged, **({"target": target} if target else {})}
    atomic_write_text(root / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(root / "summary.txt", text)
    print(text, end="")
    return summary
