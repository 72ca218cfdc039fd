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
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    Raises:
        UserError: ``path`` cannot be written (a folder, no permission, disk full); an
            existing file there is left as it was.
    """
    path = Path(path)
    try:
        _write_and_rename(path, data)
    except OSError as exc:
        raise UserError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _write_and_rename(path: Path, data: bytes) -> None:
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
                     allowed: Sequence[Any] = (),
                     resave: str = "torch.save(model.state_dict(), path)") -> Any:
    """``torch.load(path, weights_only=True)`` onto the CPU, with plain one-line errors.

    Only tensors and plain Python containers and scalars are unpickled (plus the
    classes in ``allowed``, e.g. numpy scalar types some published checkpoints
    hold): a pickled object that would run code, such as a whole saved model,
    is refused, never executed.

    Args:
        path: the file.
        what: how to name the file in errors (``checkpoint``, ``MODEL.PRETRAIN_PATH``).
        allowed: extra classes the unpickler may build (or ``(class, "module.name")``
            pairs, for a class pickled under another module path).
        resave: the call that re-saves the file as weights alone, for the refusal.

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
        found = _refused_class(str(exc))
        if found is None:
            raise UserError(f"{p}: not a {what} torch can read (not a file written by "
                            "torch.save, or a damaged one)") from None
        named = f" ({found})" if found else ""
        raise UserError(
            f"{p}: the {what} holds pickled Python objects{named}, such as a whole saved "
            "model, which are not loaded because unpickling them can run code; in the code "
            f"that wrote it, load it and save the weights alone with {resave}") from None
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{p}: not a {what} torch can read "
                        f"({type(exc).__name__}: {_first_line(exc)})") from None


def _refused_class(message: str) -> str | None:
    """The class a weights-only unpickler refused, from its message; None when the
    refusal was not about a class (a damaged or foreign file)."""
    for pattern in (r"GLOBAL (\S+) was not an allowed global", r"but got <class '([^']+)'>"):
        match = re.search(pattern, message)
        if match:
            return match.group(1)
    return "" if "unsupported global" in message.lower() else None


def _first_line(exc: BaseException) -> str:
    """The first line of an exception's message, without terminal escape codes."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else "no message"
