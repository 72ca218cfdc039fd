"""Per-iteration learning-rate schedule: linear warmup, then multistep or cosine."""
from __future__ import annotations

import bisect
import math

import torch
from yacs.config import CfgNode

from utils.errors import UserError
from utils.registry import Registry

# TRAIN.SCHEDULER name -> the decay factor at a (fractional) epoch after warmup,
# f(schedule, epoch) with the WarmupSchedule's attributes.
SCHEDULERS: Registry = Registry("TRAIN.SCHEDULER", "learning-rate schedule")


@SCHEDULERS.register("multistep")
def _multistep(s: WarmupSchedule, epoch: float) -> float:
    return s.gamma ** bisect.bisect_right(s.steps, epoch)


@SCHEDULERS.register("cosine")
def _cosine(s: WarmupSchedule, epoch: float) -> float:
    t = min(max((epoch - s.warmup_epochs) / (s.max_epochs - s.warmup_epochs), 0.0), 1.0)
    return s.min_factor + (1.0 - s.min_factor) * 0.5 * (1.0 + math.cos(math.pi * t))


class WarmupSchedule:
    """Learning-rate factor at a given iteration (``LambdaLR``'s ``lr_lambda``).

    Epoch position ``e = iteration / iters_per_epoch``. Multistep: ``gamma ** (number
    of steps <= e)``. Cosine: from 1 after warmup to ``min_factor`` at ``max_epochs``.
    During warmup (``e < warmup_epochs``) the factor is further multiplied by
    ``warmup_factor + (1 - warmup_factor) * e / warmup_epochs``, or with ``stepwise``
    by ``warmup_factor + (1 - warmup_factor) * floor(e) / (warmup_epochs - 1)``:
    constant within an epoch, from ``warmup_factor`` in the first epoch to 1 in the
    last warmup epoch (AGW, CAJ and DEEN: ``lr * (e + 1) / 10`` with factor 0.1).

    Plain attributes only, so ``LambdaLR.state_dict()`` stores them and a resumed run
    continues exactly.
    """

    def __init__(self, kind: str, iters_per_epoch: int, max_epochs: int, warmup_epochs: float,
                 warmup_factor: float, steps: tuple[int, ...], gamma: float,
                 min_factor: float, stepwise: bool = False) -> None:
        self.kind = kind
        self.iters_per_epoch = iters_per_epoch
        self.max_epochs = max_epochs
        self.warmup_epochs = warmup_epochs
        self.warmup_factor = warmup_factor
        self.steps = list(steps)
        self.gamma = gamma
        self.min_factor = min_factor
        self.stepwise = stepwise

    def __call__(self, iteration: int) -> float:
        epoch = iteration / self.iters_per_epoch
        factor = SCHEDULERS[self.kind](self, epoch)
        if epoch < self.warmup_epochs:
            alpha = (math.floor(epoch) / max(math.ceil(self.warmup_epochs) - 1, 1)
                     if self.stepwise else epoch / self.warmup_epochs)
            factor *= self.warmup_factor + (1.0 - self.warmup_factor) * alpha
        return factor


def build_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer,
                    iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Build the TRAIN.SCHEDULER schedule; call ``scheduler.step()`` after every iteration.

    Every optimizer group is scaled by the same factor of its initial learning rate.

    Raises:
        UserError: STEPS not increasing, or warmup not shorter than training.
    """
    if iters_per_epoch < 1:
        raise ValueError(f"iters_per_epoch must be positive, got {iters_per_epoch}")
    steps = tuple(cfg.TRAIN.STEPS)
    if any(s <= 0 for s in steps) or list(steps) != sorted(set(steps)):
        raise UserError(f"TRAIN.STEPS = {', '.join(map(str, steps))} must be strictly "
                        "increasing positive epochs")
    if cfg.TRAIN.WARMUP_EPOCHS >= cfg.TRAIN.MAX_EPOCHS:
        raise UserError(f"TRAIN.WARMUP_EPOCHS = {cfg.TRAIN.WARMUP_EPOCHS} must be less than "
                        f"TRAIN.MAX_EPOCHS = {cfg.TRAIN.MAX_EPOCHS}")
    schedule = WarmupSchedule(cfg.TRAIN.SCHEDULER, iters_per_epoch, cfg.TRAIN.MAX_EPOCHS,
                              cfg.TRAIN.WARMUP_EPOCHS, cfg.TRAIN.WARMUP_FACTOR, steps,
                              cfg.TRAIN.GAMMA, cfg.TRAIN.MIN_LR_FACTOR,
                              cfg.TRAIN.WARMUP_STEPWISE)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=schedule)
