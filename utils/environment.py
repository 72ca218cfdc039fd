"""What a run depended on besides its config: software versions, GPUs and the code's commit.

``environment(...)`` returns a JSON-serialisable dict written into every
``results.json``; ``format_environment`` makes the one line the run's log gets.
The git fields come from the ``git`` executable run in the project's folder;
they are None where git or the repository is absent (an installed copy, an
archive).
"""
from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

# The project's folder: the repository whose commit a run records.
PROJECT_DIR = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str | None:
    try:
        proc = subprocess.run(["git", *args], cwd=PROJECT_DIR, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout if proc.returncode == 0 else None


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "local_changes": bool or None}``.

    Local changes are edits to tracked files (staged or not); untracked files
    are not counted, since run folders and virtualenvs often sit in the tree.
    """
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {"commit": commit.strip() if commit else None,
            "local_changes": bool(status.strip()) if status is not None else None}


def _torchvision_version() -> str | None:
    try:
        import torchvision
    except ImportError:
        return None
    return torchvision.__version__


def environment(precision: dict[str, str] | None = None,
                deterministic: bool | None = None) -> dict[str, Any]:
    """The software and hardware a run used.

    Args:
        precision: e.g. ``{"training": "bf16", "extraction": "fp32"}``.
        deterministic: TRAIN.DETERMINISTIC.

    Returns:
        ``python``, ``torch``, ``torchvision``, ``cuda`` (the version torch was built
        with, None for a CPU build), ``cudnn``, ``gpus`` (model names, one per
        visible device), ``gpu_count``, ``precision``, ``deterministic`` and
        ``git`` (:func:`git_state`).
    """
    cuda = torch.cuda.is_available()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] \
        if cuda else []
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__,
            "torchvision": _torchvision_version(), "cuda": torch.version.cuda,
            "cudnn": cudnn, "gpus": gpus, "gpu_count": len(gpus),
            "precision": dict(precision or {}), "deterministic": deterministic,
            "git": git_state()}


def format_environment(env: dict[str, Any]) -> str:
    """One line for a log, e.g. ``python 3.11.9, torch 2.5.1, ..., commit 1a2b3c4 (local
    changes)``."""
    gpus = env["gpus"]
    if gpus:
        names = sorted(set(gpus))
        gpu = f"{env['gpu_count']} GPU{'s' * (len(gpus) > 1)} ({', '.join(names)})"
    else:
        gpu = "no GPU"
    git = env["git"]
    if git["commit"] is None:
        code = "git commit unknown"
    else:
        code = f"commit {git['commit'][:10]}" + (" (local changes)" if git["local_changes"]
                                                 else "")
    # Short names: log readers look for the " training " line of the trainer.
    short = {"training": "train", "extraction": "test features"}
    precision = ", ".join(f"{short.get(k, k)} {v}" for k, v in env["precision"].items())
    parts = [f"python {env['python']}", f"torch {env['torch']}",
             f"torchvision {env['torchvision']}", f"CUDA {env['cuda']}",
             f"cuDNN {env['cudnn']}", gpu,
             *([f"precision: {precision}"] if precision else []),
             *([f"deterministic {'yes' if env['deterministic'] else 'no'}"]
               if env["deterministic"] is not None else []), code]
    return "environment: " + ", ".join(parts)
