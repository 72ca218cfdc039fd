"""Process-wide settings of a run: seeds, backend flags, mixed precision, RNG isolation."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from yacs.config import CfgNode

from engine.checkpoint import capture_rng_state, restore_rng_state
from utils.errors import UserError

# TRAIN.AMP_DTYPE values other than auto.
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def configure_backends(cfg: CfgNode, device: torch.device) -> None:
    """cudnn.benchmark unless TRAIN.DETERMINISTIC; deterministic algorithms when it is on."""
    det = cfg.TRAIN.DETERMINISTIC
    torch.backends.cudnn.benchmark = device.type == "cuda" and not det
    torch.backends.cudnn.deterministic = det
    # warn_only: some CUDA kernels (e.g. adaptive pooling backward) have no
    # deterministic version; CPU training is exact either way.
    torch.use_deterministic_algorithms(det, warn_only=True)


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (an evaluation) without moving any random state of the training."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def amp_dtype(choice: str = "auto") -> torch.dtype:
    """The autocast type of TRAIN.AMP_DTYPE on the current CUDA device.

    ``auto`` is bf16 where the GPU computes it natively (compute capability 8.0
    and later), else fp16; older GPUs only emulate bf16, slowly.

    Raises:
        UserError: ``bf16`` asked for on a GPU without native bf16.
    """
    native = torch.cuda.is_bf16_supported(including_emulation=False)
    if choice == "auto":
        return torch.bfloat16 if native else torch.float16
    if choice == "bf16" and not native:
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "this machine"
        raise UserError(f"TRAIN.AMP_DTYPE = bf16 but {gpu} has no native bfloat16 (a GPU of "
                        "compute capability 8.0 or later); use auto or fp16")
    return AMP_DTYPES[choice]


def amp_settings(cfg: CfgNode, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast: TRAIN.AMP on CUDA, TRAIN.AMP_DTYPE by :func:`amp_dtype`."""
    if device.type != "cuda" or not cfg.TRAIN.AMP:
        return False, torch.float32
    return True, amp_dtype(cfg.TRAIN.AMP_DTYPE)


# How results name a computation's precision.
PRECISION_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def training_precision(cfg: CfgNode, device: torch.device) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the precision training runs in (:func:`amp_settings`)."""
    return PRECISION_NAMES[amp_settings(cfg, device)[1]]


def extraction_precision(cfg: CfgNode, device: torch.device) -> str:
    """``fp32`` unless TEST.AMP on CUDA, then the TRAIN.AMP_DTYPE type (:func:`amp_dtype`)."""
    if device.type != "cuda" or not cfg.TEST.AMP:
        return "fp32"
    return PRECISION_NAMES[amp_dtype(cfg.TRAIN.AMP_DTYPE)]
