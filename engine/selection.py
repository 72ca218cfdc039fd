"""Honest model selection: what each evaluation during training is for.

``TRAIN.SELECT``: ``last`` keeps the final epoch; ``val`` keeps the best epoch
on identities held out of training (DATA.VAL_IDS, or a dataset's own val
split); ``test`` keeps the best epoch on the test set, the field's habit,
allowed but labelled "selected on the test set" in every log line and JSON
record.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from yacs.config import CfgNode

from data.base import VIReIDDataset
from engine.evaluate import evaluate

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


def periodic_evaluation(cfg: CfgNode, dataset: VIReIDDataset, device: torch.device
                        ) -> PeriodicEval | None:
    """The evaluation run every TRAIN.EVAL_PERIOD epochs, or None.

    SELECT val: the validation split, refused when the dataset has none.
    SELECT test: the test set, labelled as selection on it. SELECT last: the
    validation split when there is one, else the test set, for monitoring only.
    The dataset's protocol runs in its monitoring form (e.g. SYSU-MM01
    all-search single-shot only); the selection score is the headline R1.

    Raises:
        UserError: SELECT val on a dataset without a validation split.
    """
    select = cfg.TRAIN.SELECT
    if select == "val":
        dataset.eval_sets("val")  # refuses a dataset without a validation split
    if select == "last" and cfg.TRAIN.EVAL_PERIOD == 0:
        return None
    split = "val" if select == "val" or (select == "last" and dataset.has_val) else "test"

    def run(model: nn.Module) -> EvalResult:
        res = evaluate(cfg, model, dataset, split=split, device=device, monitor=True)
        figures = {name: dict(entry["mean"]) for name, entry in res["settings"].items()}
        return EvalResult(score=float(res["headline"]["R1"]), figures=figures)

    return PeriodicEval(run, split, "monitor" if select == "last" else select)
