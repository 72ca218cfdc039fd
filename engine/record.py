"""The run record every ``results.json`` carries: environment, precision and dataset fingerprint.

``run_record`` gathers it (``utils.environment`` for the software, GPUs and git
commit; the dataset's ``fingerprint``), ``log_record`` writes it to the run's
log, warnings included. ``checkpoint_precision`` tells ``test.py`` what a
checkpoint was trained in.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from yacs.config import CfgNode

from data.base import VIReIDDataset
from data.fingerprint import format_fingerprint
from engine.runtime import extraction_precision
from utils.environment import environment, format_environment

Log = Callable[[str], None]


def run_record(cfg: CfgNode, device: torch.device, dataset: VIReIDDataset,
               trained: str) -> dict[str, Any]:
    """``{"environment": ..., "dataset_fingerprint": ...}`` of a run.

    Args:
        cfg: the run's config (TEST.AMP, TRAIN.AMP_DTYPE, TRAIN.DETERMINISTIC).
        device: where features are extracted.
        dataset: the dataset read.
        trained: the training precision (``fp32``, ``bf16``, ``fp16`` or a note).
    """
    precision = {"training": trained, "extraction": extraction_precision(cfg, device)}
    return {"environment": environment(precision, cfg.TRAIN.DETERMINISTIC),
            "dataset_fingerprint": dataset.fingerprint()}


def log_record(record: dict[str, Any], info: Log, warning: Log) -> None:
    """The environment and fingerprint lines, then every fingerprint warning."""
    info(format_environment(record["environment"]))
    fp = record["dataset_fingerprint"]
    for line in format_fingerprint(fp).splitlines():
        info(line)
    for line in fp["warnings"]:
        warning(line)


def checkpoint_precision(ckpt: dict[str, Any], saved: CfgNode) -> str:
    """The precision a checkpoint was trained in: recorded by the trainer, else what its
    config implies (TRAIN.AMP no or MODEL.DEVICE cpu: fp32; else the autocast type, which
    ``auto`` leaves to the GPU)."""
    recorded = ckpt.get("precision")
    if isinstance(recorded, str) and recorded:
        return recorded
    if not saved.TRAIN.AMP or saved.MODEL.DEVICE == "cpu":
        return "fp32"
    dtype = saved.TRAIN.AMP_DTYPE if saved.TRAIN.AMP_DTYPE != "auto" else "bf16 or fp16"
    return f"{dtype} on CUDA, fp32 on CPU (not recorded in the checkpoint)"
