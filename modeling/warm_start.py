"""MODEL.PRETRAIN_PATH naming one of this project's checkpoints: the whole network.

A training checkpoint (``{'model', 'config', 'num_classes', ...}``, also an
imported published model) initialises every tensor of a network of the same
architecture, e.g. to fine-tune on another dataset. The layers whose size is the
number of classes (the classifier, the modality heads' last layer) are kept
only when the class count matches; modality heads (training-only) absent from
the checkpoint keep their fresh init.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from modeling.model import VIReIDNet
from utils.errors import UserError
from utils.state import load_state


def read_model_checkpoint(path: str) -> dict[str, Any] | None:
    """The training checkpoint at ``path``; None for '', 'imagenet' and other files.

    The tensors are memory-mapped, so telling a checkpoint from a torchvision
    state dict costs no full read.
    """
    if not path or path.lower() == "imagenet" or not Path(path).is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - any unreadable file: the backbone's loader explains
        return None
    is_ckpt = isinstance(obj, dict) and isinstance(obj.get("model"), dict) and all(
        k in obj for k in ("config", "num_classes"))
    return obj if is_ckpt else None


def _class_prefixes(model: VIReIDNet) -> tuple[str, ...]:
    """Key prefixes of the layers whose output size is the number of classes."""
    layers = [model.classifier]
    if model.heads is not None:
        layers += [model.heads.visible[-1], model.heads.infrared[-1]]
    names = {id(m): n for n, m in model.named_modules()}
    return tuple(f"{names[id(layer)]}." for layer in layers)


def load_whole_model(model: VIReIDNet, ckpt: dict[str, Any], path: str) -> None:
    """Copy a checkpoint's network into ``model`` (see the module docstring).

    Raises:
        UserError: naming ``path`` and the first missing, unexpected or misshaped keys.
    """
    if not isinstance(ckpt["num_classes"], int):
        raise UserError(f"MODEL.PRETRAIN_PATH = {path}: num_classes is "
                        f"{ckpt['num_classes']!r}, not a number of classes")
    skip = _class_prefixes(model) if ckpt["num_classes"] != model.num_classes else ()
    # Modality heads are training-only: either side may lack them.
    load_state(model, ckpt["model"], f"MODEL.PRETRAIN_PATH = {path}: the checkpoint's network "
               "does not fit the config's (the keys that define the network must match, "
               "MODEL.PRETRAIN_PATH aside)", skip=skip, optional=("heads.",))
