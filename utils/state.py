"""Comparing a state dict with the one a network expects, for one-line load errors."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from utils.errors import UserError

SHOWN = 3  # items named in an error line before "(+N more)"


def short_list(items: Sequence[str], shown: int = SHOWN) -> str:
    """The first ``shown`` items, comma-separated, then how many more there are."""
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def state_problems(expected: Mapping[str, torch.Tensor], state: Mapping[str, Any]
                   ) -> list[str]:
    """Why ``state`` does not load into a network whose state dict is ``expected``.

    Returns:
        ``not tensors: ...``, ``missing keys: ...``, ``unexpected keys: ...`` and
        ``wrong shapes: ...`` for those that apply; empty when ``state`` fits.
    """
    odd = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                 for k, v in state.items()
                 if k in expected and isinstance(v, torch.Tensor) and v.shape != expected[k].shape]
    return [f"{what}: {short_list(keys)}" for what, keys in (
        ("not tensors", odd), ("missing keys", missing), ("unexpected keys", unexpected),
        ("wrong shapes", misshaped)) if keys]


def load_state(module: torch.nn.Module, state: Any, what: str, skip: tuple[str, ...] = (),
               optional: tuple[str, ...] = ()) -> None:
    """Load ``state`` into ``module``: every key must fit, or one line says why.

    The one compatibility check of every loader (test.py, MODEL.PRETRAIN_PATH, resume).

    Args:
        module: the network.
        state: the state dict to load.
        what: the start of the error line (names the file and the network).
        skip: key prefixes left out on both sides (e.g. a classifier of another size).
        optional: key prefixes either side may lack (training-only layers).

    Raises:
        UserError: ``what`` followed by the missing, unexpected, misshaped or non-tensor
            entries.
    """
    if not isinstance(state, Mapping):
        raise UserError(f"{what}: the weights are not a state dict")
    own = module.state_dict()
    expected = {k: v for k, v in own.items()
                if not k.startswith(skip) and (k in state or not k.startswith(optional))}
    given = {k: v for k, v in state.items()
             if not k.startswith(skip) and (k in own or not k.startswith(optional))}
    problems = state_problems(expected, given)
    if problems:
        raise UserError(f"{what}: " + "; ".join(problems))
    module.load_state_dict(given, strict=not skip and not optional)
