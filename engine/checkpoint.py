"""Training checkpoints: atomic writes, every RNG state, refusal of mismatched resumes.

A checkpoint is a plain dict of tensors and Python scalars/containers so that
``torch.load(path, weights_only=True)`` reads it (no pickled objects):

- ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``criterion``: state dicts
  (the model's is the unwrapped module's, also under DDP);
- ``epoch`` (epochs completed), ``iteration`` (optimizer steps completed),
  ``best_metric``, ``best_epoch``, ``select``;
- ``rng``: one entry per rank (python, numpy, torch, CUDA, sampler states);
- ``config``: the merged .ini text, ``num_classes``.
"""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from utils.config import config_differences, config_from_ini_text, network_differences
from utils.errors import UserError
from utils.io import atomic_torch_save, load_tensor_file


def capture_rng_state(sampler: Any = None) -> dict[str, Any]:
    """Every random state this process uses, as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": _sampler_state(sampler),
    }
    return state


def _sampler_state(sampler: Any) -> dict[str, Any] | None:
    """The sampler's own state, or for a sampler whose batches depend only on
    (seed, epoch) those two numbers, for the record."""
    if sampler is None:
        return None
    if hasattr(sampler, "state_dict"):
        return sampler.state_dict()
    return {k: int(getattr(sampler, k)) for k in ("seed", "epoch") if hasattr(sampler, k)}


def restore_rng_state(state: dict[str, Any], sampler: Any = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        # A run resumed on fewer GPUs restores the states it has devices for.
        for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, i)
    if state.get("sampler") and hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state["sampler"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write ``state`` atomically: a crash mid-write leaves the previous file intact."""
    atomic_torch_save(state, path)


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint onto the CPU.

    Raises:
        UserError: the file is missing or not a checkpoint written by this project.
    """
    p = Path(path)
    ckpt = load_tensor_file(p, "checkpoint")
    if not isinstance(ckpt, dict):
        raise UserError(f"{p}: not a training checkpoint")
    missing = [k for k in ("model", "config", "num_classes", "epoch") if k not in ckpt]
    if missing:
        raise UserError(f"{p}: not a training checkpoint (missing {', '.join(missing)})")
    return ckpt


def saved_config(ckpt: dict[str, Any], path: str | os.PathLike) -> CfgNode:
    """The checkpoint's saved config, parsed once (kept in the loaded dict).

    Configs saved before keys moved into method sections read with the new names.
    """
    if "_parsed_config" not in ckpt:
        ckpt["_parsed_config"] = config_from_ini_text(str(ckpt["config"]),
                                                      where=f"{path} (saved config)")
    return ckpt["_parsed_config"]


def check_same_network(saved: CfgNode, cfg: CfgNode, path: str | os.PathLike,
                       source: str) -> None:
    """Refuse a config whose network differs from a checkpoint's.

    Raises:
        UserError: naming the first key that defines the network (MODEL keys other than
            DEVICE and PRETRAIN_PATH, and the methods' network keys) and both values.
    """
    for key, before, now in network_differences(saved, cfg):
        raise UserError(f"{source}: {key} = {now!r} but the checkpoint {path} was trained "
                        f"with {before!r}; the keys that define the network must match")


def check_resume_compatible(ckpt: dict[str, Any], cfg: CfgNode, num_classes: int,
                            where: str) -> list[tuple[str, Any, Any]]:
    """Refuse a resume into a different network; return the other changed keys.

    Raises:
        UserError: a checkpoint without training state (an imported published
            model), or a key that defines the network or the number of classes
            differs from the checkpoint's.
    """
    if "optimizer" not in ckpt:
        raise UserError(f"{where}: holds a network without its training state (such as an "
                        "imported published model), so it cannot be resumed; to train from "
                        f"it, start a run with MODEL.PRETRAIN_PATH {where}")
    old = saved_config(ckpt, where)
    diffs = config_differences(old, cfg)
    model_diffs = network_differences(old, cfg)
    problems = [f"{k}: {a!r} -> {b!r}" for k, a, b in model_diffs]
    if int(ckpt["num_classes"]) != num_classes:
        problems.append(f"number of classes: {int(ckpt['num_classes'])} -> {num_classes}")
    if problems:
        raise UserError(
            f"{where}: cannot resume, the checkpoint was trained with a different model ("
            + "; ".join(problems) + "); start a new run in another TRAIN.OUTPUT_PATH"
        )
    return [d for d in diffs if d not in model_diffs]
