"""Process-wide settings of a run: seeds, backend flags, mixed precision, RNG isolation."""
from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from yacs.config import CfgNode

from engine.checkpoint import capture_rng_state, restore_rng_state


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


def amp_dtype() -> torch.dtype:
    """The mixed-precision type on CUDA: bf16 where the GPU supports it, else fp16."""
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def amp_settings(cfg: CfgNode, device: torch.device) -> tuple[bool, torch.dtype]:
    """(enabled, dtype) of autocast: TRAIN.AMP on CUDA, with :func:`amp_dtype`."""
    if device.type != "cuda" or not cfg.TRAIN.AMP:
        return False, torch.float32
    return True, amp_dtype()
