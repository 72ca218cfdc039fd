"""Checkpoint I/O: RNG capture, weights_only loading, kill during save, resume refusal."""
from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.checkpoint import (
    capture_rng_state,
    check_resume_compatible,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from utils.config import config_to_ini, load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _draws() -> tuple:
    return (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(),
            np.random.randn(), torch.rand(4).tolist())


def test_rng_state_round_trips_through_weights_only_file(tmp_path: Path) -> None:
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)   # leaves a cached gaussian in python's state
    np.random.randn()    # and one in numpy's
    state = capture_rng_state()
    save_checkpoint(tmp_path / "rng.pth", {"rng": [state]})
    expected = _draws()
    _draws()  # move every generator on
    loaded = torch.load(tmp_path / "rng.pth", weights_only=True)["rng"][0]
    restore_rng_state(loaded)
    assert _draws() == expected


def _ckpt(value: float) -> dict:
    cfg = load_config(None, ["MODEL.NAME", "resnet18"])
    return {"model": {"w": torch.full((64, 64), value)}, "config": config_to_ini(cfg),
            "num_classes": 4, "epoch": int(value), "rng": [capture_rng_state()],
            "optimizer": {}}


def test_kill_during_save_keeps_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint(path, _ckpt(1.0))
    # A second process dies (os._exit, no cleanup) in the middle of writing epoch 2.
    script = textwrap.dedent(f"""
        import os, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        import utils.io
        from engine.checkpoint import save_checkpoint
        from tests.test_checkpoint import _ckpt
        def die(fd):
            os._exit(9)  # the bytes are written to the temporary file, not yet renamed
        utils.io.os.fsync = die
        save_checkpoint({str(path)!r}, _ckpt(2.0))
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    leftovers = list(tmp_path.glob(".last.pth.*.tmp"))
    assert leftovers, "the killed write should have left its temporary file behind"
    ckpt = load_checkpoint(path)
    assert ckpt["epoch"] == 1
    assert torch.equal(ckpt["model"]["w"], torch.full((64, 64), 1.0))


def test_failed_rename_keeps_previous_checkpoint(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "last.pth"
    save_checkpoint(path, _ckpt(1.0))

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr("utils.io.os.replace", boom)
    with pytest.raises(UserError, match=r"last.pth: cannot write \(disk full\)"):
        save_checkpoint(path, _ckpt(2.0))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob(".last.pth.*.tmp"))


def test_load_checkpoint_refuses_bad_files(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_checkpoint(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="junk.pth: not a checkpoint torch can read"):
        load_checkpoint(tmp_path / "junk.pth")
    (tmp_path / "zeros.pth").write_bytes(bytes(64))
    with pytest.raises(UserError, match="zeros.pth: not a checkpoint torch can read"):
        load_checkpoint(tmp_path / "zeros.pth")
    # A whole pickled model (as the source design released): refused, never unpickled,
    # in one plain line of our own (no terminal escapes, no advice to drop weights_only).
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "whole.pth")
    msg = str(info.value)
    assert "holds pickled Python objects" in msg and "state_dict()" in msg
    assert "\n" not in msg and "\x1b" not in msg and "weights_only" not in msg
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(UserError, match="missing model, config"):
        load_checkpoint(tmp_path / "other.pth")


def test_resume_refuses_a_different_model_and_lists_other_changes() -> None:
    ckpt = _ckpt(1.0)
    same_net = load_config(None, ["MODEL.NAME", "resnet18", "TRAIN.MAX_EPOCHS", "7",
                                  "MODEL.DEVICE", "cpu"])
    changed = check_resume_compatible(ckpt, same_net, 4, "last.pth")
    assert ("TRAIN.MAX_EPOCHS", 120, 7) in changed
    assert ("MODEL.DEVICE", "auto", "cpu") in changed
    other_net = load_config(None, ["MODEL.NAME", "resnet34", "MODEL.LAST_STRIDE", "2"])
    with pytest.raises(UserError, match=r"MODEL\.NAME: 'resnet18' -> 'resnet34'.*"
                                        r"MODEL\.LAST_STRIDE: 1 -> 2"):
        check_resume_compatible(ckpt, other_net, 4, "last.pth")
    with pytest.raises(UserError, match="number of classes: 4 -> 5"):
        check_resume_compatible(ckpt, same_net, 5, "last.pth")
