"""Device choice and the few collective operations training needs.

A run started by ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and
``MASTER_PORT`` in the environment) trains with DistributedDataParallel: NCCL
on CUDA, gloo on the CPU, SyncBatchNorm when asked for, with any number of
processes (``--nproc_per_node=1`` runs that same path on one GPU). A plain
``python train_x.py`` run has no process group.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from yacs.config import CfgNode

from utils.errors import UserError

# Rank 0 evaluates while the other ranks wait at a barrier: allow for a long test.
_TIMEOUT = datetime.timedelta(hours=3)

# What torchrun sets and env:// initialisation reads.
_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    launched: bool = False  # started by torchrun (or another env:// launcher)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """Whether the run trains in a process group (DDP), even of one process."""
        return self.launched or self.world_size > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    try:
        return int(value) if value else default
    except ValueError:
        raise UserError(f"environment variable {name} = {value!r} is not an integer") from None


def resolve_device(cfg: CfgNode, local_rank: int = 0) -> torch.device:
    """Turn MODEL.DEVICE (auto, cpu, cuda, cuda:N) into a device.

    Under torchrun, ``auto`` and ``cuda`` mean this process's local GPU.

    Raises:
        UserError: a CUDA device is asked for but not present.
    """
    name = cfg.MODEL.DEVICE.strip().lower()
    if name == "cpu":
        return torch.device("cpu")
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        name = "cuda"
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise UserError(
                f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} but CUDA is not available on this "
                "machine; use cpu or auto"
            )
        index = local_rank
        if name != "cuda":
            try:
                index = int(name.split(":", 1)[1])
            except ValueError:
                raise UserError(
                    f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} is not auto, cpu, cuda or cuda:N"
                ) from None
        if not 0 <= index < torch.cuda.device_count():
            raise UserError(
                f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r}: this machine has "
                f"{torch.cuda.device_count()} CUDA device(s) (cuda:0..)"
            )
        return torch.device("cuda", index)
    raise UserError(f"MODEL.DEVICE = {cfg.MODEL.DEVICE!r} is not auto, cpu, cuda or cuda:N")


def init_distributed(cfg: CfgNode) -> tuple[DistInfo, torch.device]:
    """Join the process group when started by torchrun; pick this process's device.

    Returns:
        (info, device). A process not started by a launcher gets ``DistInfo()`` and
        no process group.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    launched = all(os.environ.get(k) for k in _LAUNCH_VARIABLES)
    device = resolve_device(cfg, local_rank)
    info = DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, launched=launched)
    if info.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", timeout=_TIMEOUT)
    return info, device


def shutdown_distributed() -> None:
    """Leave the process group, if any."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def process_group() -> str:
    """`` (nccl)`` / `` (gloo)`` when this process is in a process group, else empty."""
    if dist.is_available() and dist.is_initialized():
        return f" ({dist.get_backend()})"
    return ""


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """Average ``tensor`` over ranks in place and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= dist.get_world_size()
    return tensor


def all_gather_objects(obj: Any) -> list[Any]:
    """Gather one picklable object from every rank, in rank order."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any) -> Any:
    """Return rank 0's ``obj`` on every rank."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def synchronize_module(module: nn.Module) -> None:
    """Average the gradients and floating-point buffers of a module DDP does not wrap.

    The criterion's parameters and its center-loss centres (a buffer updated in
    the forward pass) would otherwise drift apart between ranks.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    for p in module.parameters():
        if p.grad is not None:
            all_reduce_mean(p.grad)
    for b in module.buffers():
        if b.is_floating_point():
            all_reduce_mean(b.data)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (checkpoints store its state dict)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
