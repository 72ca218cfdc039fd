"""Honest model selection: what each evaluation during training is for.

``TRAIN.SELECT``: ``last`` keeps the final epoch; ``val`` keeps the best epoch
on held-out ids (SYSU-MM01 with DATA.SYSU_VAL_AS_TRAIN = no); ``test`` keeps
the best epoch on the test set, the field's habit, allowed but labelled
"selected on the test set" in every log line and JSON record.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from engine.evaluate import evaluate
from utils.errors import UserError

# What the evaluation figures are for, written next to them in logs and JSON.
PURPOSE = {
    "val": "model selection on the held-out val ids",
    "test": "selected on the test set",
    "monitor": "monitoring only, not used for selection",
}


@dataclass
class EvalResult:
    """Figures of one evaluation.

    Attributes:
        score: the selection figure (higher is better).
        figures: JSON-serialisable figures (percentages), e.g. ``{"R1": .., "mAP": ..}``.
    """

    score: float
    figures: dict[str, Any]


@dataclass
class PeriodicEval:
    """Evaluation run every ``TRAIN.EVAL_PERIOD`` epochs on rank 0.

    Attributes:
        fn: evaluates the (unwrapped, eval-mode) model.
        split: ``val`` or ``test``.
        purpose: a key of :data:`PURPOSE`.
    """

    fn: Callable[[nn.Module], EvalResult]
    split: str
    purpose: str


def has_val_split(dataset: Any) -> bool:
    """Whether the dataset holds ids out of training for validation (SYSU-MM01 only)."""
    return bool(getattr(dataset, "val_query", None))


def periodic_evaluation(cfg: CfgNode, dataset: Any, device: torch.device
                        ) -> PeriodicEval | None:
    """The evaluation run every TRAIN.EVAL_PERIOD epochs, or None.

    SELECT val: the held-out val ids (SYSU-MM01 with DATA.SYSU_VAL_AS_TRAIN no),
    refused elsewhere. SELECT test: the test set, labelled as selection on it.
    SELECT last: val ids when held out, else the test set, for monitoring only.
    SYSU-MM01 monitors all-search single-shot; the selection score is the
    headline R1 (SYSU all-search single-shot, RegDB visible-to-thermal, LLCM
    infrared-to-visible).

    Raises:
        UserError: SELECT val on a dataset without a val split.
    """
    select = cfg.TRAIN.SELECT
    if select == "val" and not has_val_split(dataset):
        if dataset.name == "sysumm":
            raise UserError("TRAIN.SELECT = val needs held-out val ids: set "
                            "DATA.SYSU_VAL_AS_TRAIN = no (or TRAIN.SELECT = last)")
        raise UserError(f"TRAIN.SELECT = val: {dataset.name} has no val split (only SYSU-MM01 "
                        "with DATA.SYSU_VAL_AS_TRAIN = no); use last, or test (labelled as "
                        "selected on the test set)")
    if select == "last" and cfg.TRAIN.EVAL_PERIOD == 0:
        return None
    split = "val" if select == "val" or (select == "last" and has_val_split(dataset)) else "test"
    eval_cfg = cfg
    if split == "val":
        # The official gallery permutations cover the test ids only.
        eval_cfg = cfg.clone()
        eval_cfg.defrost()
        eval_cfg.TEST.GALLERY, eval_cfg.TEST.PERM_PATH = "random", ""
        eval_cfg.freeze()
    sysu = {"modes": ("all",), "shots": (1,)} if dataset.name == "sysumm" else {}

    def run(model: nn.Module) -> EvalResult:
        res = evaluate(eval_cfg, model, dataset, split=split, device=device, **sysu)
        figures = {name: dict(entry["mean"]) for name, entry in res["settings"].items()}
        return EvalResult(score=float(res["headline"]["R1"]), figures=figures)

    return PeriodicEval(run, split, "monitor" if select == "last" else select)
