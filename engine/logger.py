"""What a run reports: ``log.txt``, ``metrics.jsonl``, TensorBoard and the progress display.

Only rank 0 writes files. On a terminal each epoch shows a tqdm bar (loss
terms, learning rate, images/s, ETA); otherwise a plain line is logged every
``TRAIN.LOG_PERIOD`` iterations so that redirected output stays readable.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from utils.io import atomic_write_text

LOGGER_NAME = "engine"


class _TqdmHandler(logging.StreamHandler):
    """Writes through ``tqdm.write`` so log lines do not break a live bar."""

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, "file_only", False):  # e.g. the error line the entry script prints
            return
        try:
            tqdm.write(self.format(record), file=sys.stdout)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def setup_logger(output_dir: str | os.PathLike | None, rank: int = 0,
                 console: bool = True) -> logging.Logger:
    """Route every package's log records to stdout (+ ``output_dir/log.txt``, appended).

    The handlers sit on the root logger so that the dataset readers' statistics
    tables land in ``log.txt`` too. Other ranks than 0 only print warnings and
    errors, prefixed with their rank. Calling it again (e.g. for the next RegDB
    trial) replaces the handlers this function installed. ``console=False``
    keeps stdout quiet (benchmarks).

    Returns:
        The engine's logger.
    """
    close_logger()
    root = logging.getLogger()
    root.setLevel(logging.INFO)
    logger = logging.getLogger(LOGGER_NAME)
    if rank != 0:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(logging.WARNING)
        h.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
        handlers: list[logging.Handler] = [h]
    else:
        handlers = []
        if console:
            stream = _TqdmHandler()
            stream.setFormatter(logging.Formatter("%(message)s"))
            handlers.append(stream)
        if output_dir is not None:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(Path(output_dir) / "log.txt", mode="a", encoding="utf-8")
            fh.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            handlers.append(fh)
    for h in handlers:
        h._vireid = True  # type: ignore[attr-defined]
        root.addHandler(h)
    return logger


def get_logger() -> logging.Logger:
    """The run logger (configured by :func:`setup_logger`)."""
    return logging.getLogger(LOGGER_NAME)


class MetricsWriter:
    """``metrics.jsonl`` (one JSON object per epoch) and TensorBoard scalars.

    Args:
        output_dir: run folder.
        enabled: False on ranks other than 0 (every call is then a no-op).
    """

    def __init__(self, output_dir: str | os.PathLike, enabled: bool = True) -> None:
        self.path = Path(output_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                SummaryWriter = None  # noqa: N806
            if SummaryWriter is not None:
                self._tb = SummaryWriter(log_dir=str(Path(output_dir) / "tensorboard"))

    def truncate_after(self, epoch: int) -> None:
        """Drop lines of epochs after ``epoch`` (a resumed run writes them again)."""
        if not self.enabled or not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("epoch", 0) <= epoch:
                    kept.append(line)
            except json.JSONDecodeError:  # a line cut by a kill: drop it
                continue
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))

    def write_epoch(self, record: dict[str, Any]) -> None:
        """Append one epoch's record and mirror its numbers to TensorBoard."""
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()
        if self._tb is not None:
            for key, value in _flatten(record).items():
                if key != "epoch":
                    self._tb.add_scalar(f"epoch/{key}", value, record["epoch"])
            self._tb.flush()

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Per-iteration TensorBoard scalars (loss terms, learning rate)."""
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(f"iter/{key}", value, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _flatten(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[name] = float(value)
    return out


def format_duration(seconds: float) -> str:
    return str(datetime.timedelta(seconds=int(max(seconds, 0))))


def format_terms(terms: dict[str, float]) -> str:
    """``loss 3.21 (id 2.10 tri 1.11)``: the sum, then each term without its prefix."""
    total = sum(terms.values())
    parts = " ".join(f"{k.removeprefix('loss_')} {v:.4f}" for k, v in terms.items())
    return f"loss {total:.4f} ({parts})"


def format_figures(ev: dict[str, Any]) -> str:
    """``[setting] R1 .. mAP ..`` for every setting of an evaluation record."""
    parts = []
    for key, value in ev.items():
        if isinstance(value, dict):
            inner = " ".join(f"{k} {v:.2f}" for k, v in value.items()
                             if isinstance(v, (int, float)))
            parts.append(f"[{key}] {inner}")
        elif key in ("R1", "R5", "R10", "R20", "mAP", "mINP"):
            parts.append(f"{key} {value:.2f}")
    return " ".join(parts)


class EpochProgress:
    """Progress of one epoch: a tqdm bar on a terminal, periodic log lines otherwise.

    Args:
        epoch: 1-based epoch number; max_epochs: the run's last epoch.
        total: iterations in the epoch; log_period: iterations between plain lines.
        enabled: False on ranks other than 0.
        remaining_after: iterations of the run left after this epoch (for the ETA).
    """

    def __init__(self, epoch: int, max_epochs: int, total: int, log_period: int,
                 enabled: bool, remaining_after: int = 0) -> None:
        self.epoch, self.max_epochs, self.total = epoch, max_epochs, total
        self.log_period, self.enabled = log_period, enabled
        self.remaining_after = remaining_after
        self.start = time.perf_counter()
        self.images = 0
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = tqdm(total=total, desc=f"epoch {epoch}/{max_epochs}",
                            dynamic_ncols=True, leave=False, file=sys.stdout)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    @property
    def images_per_s(self) -> float:
        return self.images / max(self.elapsed, 1e-9)

    def update(self, it: int, batch_size: int, terms: dict[str, float], lr: float) -> None:
        """Record iteration ``it`` (1-based) of ``batch_size`` images."""
        self.images += batch_size
        if not self.enabled:
            return
        if self.bar is not None:
            post = {k.removeprefix("loss_"): f"{v:.3f}" for k, v in terms.items()}
            post.update(lr=f"{lr:.2e}", img_s=f"{self.images_per_s:.0f}")
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(1)
        elif it % self.log_period == 0 or it == self.total:
            per_iter = self.elapsed / it
            eta = per_iter * (self.total - it + self.remaining_after)
            get_logger().info(
                f"epoch {self.epoch}/{self.max_epochs} iter {it}/{self.total} "
                f"{format_terms(terms)} lr {lr:.3e} {self.images_per_s:.1f} img/s "
                f"eta {format_duration(eta)}"
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def close_logger() -> None:
    """Remove and close the handlers :func:`setup_logger` installed (closes ``log.txt``)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_vireid", False):
            root.removeHandler(h)
            h.close()
