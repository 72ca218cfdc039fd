"""The training loop shared by every dataset's script.

One epoch is: ``sampler.set_epoch``; for every batch, forward ``model(img,
modality)``, the criterion's dict of weighted loss terms, their sum, backward,
optimizer step, scheduler step (per iteration). CUDA runs use automatic mixed
precision (TRAIN.AMP_DTYPE: bf16 where the GPU has it, else fp16 with a grad
scaler) and channels_last; CPU runs are fp32 through the same code.

Model selection (``TRAIN.SELECT``): ``last`` keeps the final epoch; ``val``
keeps the best epoch on held-out ids; ``test`` keeps the best epoch on the test
set, the field's habit, and every log line and JSON record says so.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from yacs.config import CfgNode

from data.build import make_train_loader
from engine.checkpoint import (
    capture_rng_state,
    check_resume_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from engine.distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    broadcast_object,
    process_group,
    synchronize_module,
    unwrap,
)
from engine.logger import (
    EpochProgress,
    MetricsWriter,
    format_duration,
    format_figures,
    format_terms,
    get_logger,
)
from engine.runtime import (
    PRECISION_NAMES,
    amp_settings,
    configure_backends,
    preserved_rng,
    seed_everything,
)
from engine.selection import PURPOSE, PeriodicEval
from layers import build_criterion
from modeling import build_model
from solver import build_optimizer, build_scheduler
from utils.config import config_to_ini, save_config
from utils.errors import UserError
from utils.io import atomic_write_bytes
from utils.state import load_state


class NonFiniteLossError(UserError):
    """A loss term became NaN or infinite; training stops, checkpoints stay as they were."""


@dataclass
class FitResult:
    """Where training ended and which checkpoint is the selected model."""

    epoch: int
    iteration: int
    selected_path: Path
    selected_epoch: int
    best_metric: float | None


class Trainer:
    """Builds model, criterion, optimizer, scheduler and loader from ``cfg`` and trains.

    Args:
        cfg: the merged, frozen configuration.
        dataset: a dataset object with ``.train`` and ``.num_classes``.
        device: from :func:`engine.distributed.init_distributed`.
        info: this process's rank and the world size.
        periodic_eval: evaluation every ``TRAIN.EVAL_PERIOD`` epochs (rank 0 only).
    """

    def __init__(self, cfg: CfgNode, dataset: Any, device: torch.device,
                 info: DistInfo | None = None, periodic_eval: PeriodicEval | None = None) -> None:
        self.cfg, self.device = cfg, device
        self.info = info or DistInfo()
        self.log = get_logger()
        self.output_dir = Path(cfg.TRAIN.OUTPUT_PATH)
        self.periodic_eval = periodic_eval
        self.select = cfg.TRAIN.SELECT
        self.num_classes = int(dataset.num_classes)

        seed_everything(cfg.TRAIN.SEED)
        configure_backends(cfg, device)
        self.amp, self.amp_dtype = amp_settings(cfg, device)
        self.channels_last = device.type == "cuda" and cfg.TRAIN.CHANNELS_LAST
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        model = build_model(cfg, self.num_classes)
        # SyncBatchNorm runs on GPUs only; CPU runs keep per-process statistics.
        if self.info.enabled and cfg.TRAIN.SYNC_BN and device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = model.to(device, memory_format=self.memory_format)
        self.criterion = build_criterion(cfg, self.num_classes, model.feat_dim).to(device)
        self.optimizer = build_optimizer(cfg, model, self.criterion)
        # Batches arrive as uint8 and are normalised and erased on ``device``.
        self.loader, self.sampler = make_train_loader(
            cfg, dataset, rank=self.info.rank, world_size=self.info.world_size,
            verbose=self.info.is_main, device=device)
        self.iters_per_epoch = len(self.loader)
        if self.iters_per_epoch == 0:
            raise UserError("the training loader yields no batch: too few identities with "
                            "images of both modalities for DATA.TRAIN_BATCH_SIZE")
        self.scheduler = build_scheduler(cfg, self.optimizer, self.iters_per_epoch)
        self.scaler = torch.amp.GradScaler(
            device.type, enabled=self.amp and self.amp_dtype == torch.float16)
        if self.info.enabled:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None)
        self.model = model

        self.epoch = 0          # epochs completed
        self.iteration = 0      # optimizer steps completed
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.metrics = MetricsWriter(self.output_dir, enabled=self.info.is_main)
        if self.info.is_main:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            for stale in self.output_dir.glob(".*.pth.*.tmp"):  # left by a kill mid-save
                stale.unlink()

    # ----------------------------------------------------------------- resume
    def resume(self, path: str | Path) -> None:
        """Restore every state from a checkpoint written by this trainer.

        Raises:
            UserError: unreadable file, or a checkpoint of a different model.
        """
        path = Path(path)
        ckpt = load_checkpoint(path)
        changed = check_resume_compatible(ckpt, self.cfg, self.num_classes, str(path))
        # Hyper-parameters (learning rates, weight decay, schedule shape) come from
        # the current config, so allowed changes such as a longer MAX_EPOCHS take
        # effect; moments and step counts come from the checkpoint.
        fresh = [{k: v for k, v in g.items() if k != "params"}
                 for g in self.optimizer.param_groups]
        # LOSS.TERMS decides whether the model has modality heads.
        keys = ", ".join(k for k, _, _ in changed if k.startswith(("LOSS.", "TRAIN."))) or "-"
        load_state(unwrap(self.model), ckpt["model"],
                   f"{path}: cannot resume, the loss or optimizer settings build different "
                   f"parameters than the checkpoint's (changed keys: {keys})")
        try:
            self.criterion.load_state_dict(ckpt["criterion"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            keys = ", ".join(k for k, _, _ in changed if k.startswith(("LOSS.", "TRAIN."))) or "-"
            raise UserError(
                f"{path}: cannot resume, the loss or optimizer settings build different "
                f"parameters than the checkpoint's (changed keys: {keys}; "
                f"{str(exc).strip().splitlines()[0]})") from None
        for group, hyper in zip(self.optimizer.param_groups, fresh):
            group.update(hyper)
        self._restore_schedule(ckpt)
        if self.scaler.is_enabled() and ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.iteration = int(ckpt["epoch"]), int(ckpt["iteration"])
        self.best_metric = ckpt.get("best_metric")
        self.best_epoch = ckpt.get("best_epoch")
        states = ckpt.get("rng") or []
        if len(states) == self.info.world_size:
            restore_rng_state(states[self.info.rank], self.sampler)
        elif states:
            restore_rng_state(states[0], self.sampler)
            self.log.warning(f"resuming with {self.info.world_size} process(es) from a run of "
                             f"{len(states)}: the continuation is not bit-exact")
        self._carry_best(path)
        self.metrics.truncate_after(self.epoch)
        self.log.info(f"resumed from {path} at epoch {self.epoch} (iteration {self.iteration})")
        for key, old, new in changed:
            self.log.info(f"  config changed since the checkpoint: {key} {old!r} -> {new!r}")

    def _carry_best(self, path: Path) -> None:
        """Resuming into another folder: bring the run's best.pth along (or forget it)."""
        target = self.output_dir / "best.pth"
        if self.best_epoch is None or target.is_file():
            return
        source = path.parent / "best.pth"
        if source.is_file():
            if self.info.is_main:
                atomic_write_bytes(target, source.read_bytes())
            barrier()
            return
        self.log.warning(f"{source} not found: the best epoch so far ({self.best_epoch}) is "
                         "forgotten and selection starts again from the next evaluation")
        self.best_metric, self.best_epoch = None, None

    def _restore_schedule(self, ckpt: dict[str, Any]) -> None:
        sched = dict(ckpt["scheduler"])
        sched["lr_lambdas"] = [None] * len(self.optimizer.param_groups)
        sched["base_lrs"] = list(self.scheduler.base_lrs)
        self.scheduler.load_state_dict(sched)
        step = self.scheduler.last_epoch
        lrs = [base * fn(step) for base, fn in zip(self.scheduler.base_lrs,
                                                   self.scheduler.lr_lambdas)]
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = lrs

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The checkpoint dict (collective under DDP: every rank must call it)."""
        rng = all_gather_objects(capture_rng_state(self.sampler))
        return {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "criterion": self.criterion.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_metric": self.best_metric,
            "best_epoch": self.best_epoch,
            "select": self.select,
            "rng": rng,
            "config": config_to_ini(self.cfg),
            "num_classes": self.num_classes,
            # What test.py records as the trained precision (the config cannot say: auto).
            "precision": PRECISION_NAMES[self.amp_dtype],
        }

    def _save(self, names: list[str]) -> None:
        if not names:
            return
        state = self.state_dict()
        if self.info.is_main:
            for name in names:
                save_checkpoint(self.output_dir / name, state)
            self.log.info(f"saved {', '.join(names)} (epoch {self.epoch})")

    # ------------------------------------------------------------------ epoch
    def _check_finite(self, names: list[str], values: list[float], epoch: int, it: int) -> None:
        bad = [f"{n} = {v}" for n, v in zip(names, values) if not np.isfinite(v)]
        if bad:
            last = self.output_dir / "last.pth"
            kept = (f"last good checkpoint {last} left untouched" if last.is_file()
                    else "no checkpoint written yet")
            raise NonFiniteLossError(
                f"non-finite loss at epoch {epoch}, iteration {it}/{self.iters_per_epoch}: "
                f"{', '.join(bad)}; training stopped ({kept}); lower TRAIN.BASE_LR or check "
                f"the loss settings")

    def train_step(self, batch: dict[str, torch.Tensor], epoch: int, it: int
                   ) -> dict[str, float]:
        """One optimizer step on one batch; returns the loss terms (averaged over ranks)."""
        dev = self.device
        img = batch["img"].to(dev, non_blocking=True, memory_format=self.memory_format)
        labels = {k: batch[k].to(dev, non_blocking=True)
                  for k in ("pid", "modality", "cam", "part") if k in batch}
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=self.amp_dtype, enabled=self.amp):
            # The batch part reaches the network only when the batch has one (a
            # method's front routes the copies through their own stems).
            parts = (labels["part"],) if "part" in labels else ()
            outputs = self.model(img, labels["modality"], *parts)
            loss, terms = self.criterion(outputs, labels)
        names = list(terms)
        # One host sync per step: the values are needed to stop on NaN before
        # they reach the weights, and under DDP every rank must stop together.
        values = all_reduce_mean(torch.stack([terms[n].detach().float() for n in names]))
        values_list = values.tolist()
        self._check_finite(names, values_list, epoch, it)
        self.scaler.scale(loss).backward()
        if self.info.enabled:
            synchronize_module(self.criterion)  # DDP does not wrap the loss
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.iteration += 1
        return dict(zip(names, values_list))

    def train_one_epoch(self, epoch: int) -> dict[str, Any]:
        """Train epoch ``epoch`` (1-based); return its metrics record."""
        self.model.train()
        self.criterion.train()
        self.sampler.set_epoch(epoch)
        remaining = (self.cfg.TRAIN.MAX_EPOCHS - epoch) * self.iters_per_epoch
        progress = EpochProgress(epoch, self.cfg.TRAIN.MAX_EPOCHS, self.iters_per_epoch,
                                 self.cfg.TRAIN.LOG_PERIOD, self.info.is_main, remaining)
        sums: dict[str, float] = {}
        try:
            for it, batch in enumerate(self.loader, start=1):
                terms = self.train_step(batch, epoch, it)
                for k, v in terms.items():
                    sums[k] = sums.get(k, 0.0) + v
                lr = self.optimizer.param_groups[0]["lr"]
                progress.update(it, batch["img"].shape[0] * self.info.world_size, terms, lr)
                if it % self.cfg.TRAIN.LOG_PERIOD == 0:
                    self.metrics.scalars({**terms, "lr": lr}, self.iteration)
        finally:
            progress.close()
        n = max(self.iters_per_epoch, 1)
        means = {k: v / n for k, v in sums.items()}
        self.epoch = epoch
        return {
            "epoch": epoch,
            "iteration": self.iteration,
            "loss": sum(means.values()),
            **means,
            "lr": self.optimizer.param_groups[0]["lr"],
            "time_s": round(progress.elapsed, 3),
            "images_per_s": round(progress.images_per_s, 2),
        }

    def evaluate(self) -> dict[str, Any] | None:
        """Run the periodic evaluation on rank 0 (others wait); returns its JSON record."""
        if self.periodic_eval is None:
            return None
        record = None
        if self.info.is_main:
            model = unwrap(self.model)
            start = time.perf_counter()
            with preserved_rng(), torch.no_grad():
                model.eval()
                result = self.periodic_eval.fn(model)
                model.train()
            record = {"split": self.periodic_eval.split,
                      "purpose": PURPOSE[self.periodic_eval.purpose],
                      "score": result.score, **result.figures,
                      "time_s": round(time.perf_counter() - start, 3)}
        barrier()
        return broadcast_object(record)

    # -------------------------------------------------------------------- fit
    def _eval_due(self, epoch: int) -> bool:
        if self.periodic_eval is None:
            return False
        period, last = self.cfg.TRAIN.EVAL_PERIOD, self.cfg.TRAIN.MAX_EPOCHS
        if epoch == last:
            # For SELECT last the final test follows at once; no need to monitor twice.
            return self.periodic_eval.purpose != "monitor"
        return period > 0 and epoch % period == 0

    def fit(self) -> FitResult:
        """Train from the current epoch to ``TRAIN.MAX_EPOCHS``; save and select."""
        cfg = self.cfg
        max_epochs = cfg.TRAIN.MAX_EPOCHS
        if self.info.is_main:  # only now: a refused resume leaves the run's config alone
            save_config(cfg, self.output_dir / "config.ini")
        if self.epoch == 0:
            self._log_start()
        try:
            for epoch in range(self.epoch + 1, max_epochs + 1):
                record = self.train_one_epoch(epoch)
                line = (f"epoch {epoch}/{max_epochs} done: {format_terms(self._terms(record))} "
                        f"lr {record['lr']:.3e} {record['images_per_s']:.1f} img/s "
                        f"time {format_duration(record['time_s'])}")
                self.log.info(line)
                names = []
                if self._eval_due(epoch):
                    ev = self.evaluate()
                    record["eval"] = ev
                    self.log.info(f"epoch {epoch} {ev['split']} ({ev['purpose']}): "
                                  f"{format_figures(ev)}")
                    if self.select != "last" and (self.best_metric is None
                                                  or ev["score"] > self.best_metric):
                        self.best_metric, self.best_epoch = float(ev["score"]), epoch
                        names.append("best.pth")
                        self.log.info(f"new best {ev['split']} score {ev['score']:.2f} at epoch "
                                      f"{epoch} ({ev['purpose']})")
                if epoch % cfg.TRAIN.CHECKPOINT_PERIOD == 0 or epoch == max_epochs:
                    names.append("last.pth")
                self._save(names)
                self.metrics.write_epoch(record)
        finally:
            self.metrics.close()
        barrier()
        if self.select == "last" or self.best_epoch is None:
            selected, sel_epoch = self.output_dir / "last.pth", self.epoch
        else:
            selected, sel_epoch = self.output_dir / "best.pth", self.best_epoch
        return FitResult(self.epoch, self.iteration, selected, sel_epoch, self.best_metric)

    def load_selected(self, result: FitResult) -> nn.Module:
        """Load the selected checkpoint's weights; return the unwrapped model in eval mode."""
        model = unwrap(self.model)
        if result.selected_epoch != self.epoch:
            ckpt = load_checkpoint(result.selected_path)
            model.load_state_dict(ckpt["model"])
        return model.eval()

    @staticmethod
    def _terms(record: dict[str, Any]) -> dict[str, float]:
        return {k: v for k, v in record.items() if k.startswith("loss_")}

    def _log_start(self) -> None:
        model = unwrap(self.model)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        precision = str(self.amp_dtype).removeprefix("torch.") if self.amp else "float32"
        self.log.info(
            f"training {self.cfg.MODEL.NAME} ({params:.2f} M parameters) on {self.device} "
            f"x{self.info.world_size}{process_group()}, {precision}, {self.num_classes} classes, "
            f"{self.iters_per_epoch} iterations/epoch, {self.cfg.TRAIN.MAX_EPOCHS} epochs, "
            f"selection: {self.select}"
            + (" (selected on the test set)" if self.select == "test" else "")
            + (", SyncBatchNorm" if any(
                isinstance(m, nn.SyncBatchNorm) for m in model.modules()) else ""))
        if self.cfg.TRAIN.SYNC_BN and self.info.enabled and self.device.type != "cuda":
            self.log.info("TRAIN.SYNC_BN ignored: SyncBatchNorm needs CUDA devices")

