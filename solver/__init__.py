"""Optimizer and learning-rate schedule builders."""
from solver.optimizer import build_optimizer
from solver.scheduler import WarmupSchedule, build_scheduler

__all__ = ["WarmupSchedule", "build_optimizer", "build_scheduler"]
