"""Atomic writes: a file is either the old complete version or the new one."""
from __future__ import annotations

import io
import os
import pickle
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp makes the file owner-only; give it the usual permissions.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically (serialised in memory first)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_tensor_file(path: str | os.PathLike, what: str = "file",
                     allowed: Sequence[Any] = ()) -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with plain one-line errors.

    Only tensors and plain Python containers and scalars are unpickled (plus the
    classes in ``allowed``, e.g. numpy scalar types some published checkpoints
    hold): a pickled object that would run code, such as a whole saved model,
    is refused, never executed.

    Args:
        path: the file.
        what: how to name the file in errors (``checkpoint``, ``MODEL.PRETRAIN_PATH``).
        allowed: extra classes the unpickler may build.

    Raises:
        UserError: missing file, a pickled object, or a file torch cannot read.
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found")
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # Only a class reference (a GLOBAL) means pickled objects; other refusals come
        # from a damaged or foreign file.
        if "unsupported global" not in str(exc).lower():
            raise UserError(f"{p}: not a {what} torch can read (not a file written by "
                            "torch.save, or a damaged one)") from None
        raise UserError(
            f"{p}: the {what} holds pickled Python objects (such as a whole saved model), "
            "which are not loaded because unpickling them can run code; in the code that "
            "wrote it, load it and save the weights alone with "
            "torch.save(model.state_dict(), path)") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{p}: not a {what} torch can read "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else "no message"
