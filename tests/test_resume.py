"""Exact resume: a run killed and resumed ends with the same weights as an uninterrupted one."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from engine.checkpoint import load_checkpoint
from engine.distributed import DistInfo
from engine.launch import train_and_test, train_main
from engine.trainer import Trainer
from utils.config import config_to_ini, load_config
from utils.errors import UserError

main_regdb = partial(train_main, "train_regdb.py", "regdb")

CPU = torch.device("cpu")
CONFIG = str(Path(__file__).resolve().parents[1] / "configs" / "res50/regdb.ini")


def tiny_opts(root: Path, out: Path, *extra: str) -> list[str]:
    """A two-stream resnet18 with every stateful loss (centres, heads), 3 epochs x 2 steps."""
    return ["DATA.ROOT", str(root), "DATA.SIZE_TRAIN", "32,16", "DATA.SIZE_TEST", "32,16",
            "DATA.TRAIN_BATCH_SIZE", "16", "DATA.NUM_WORKERS", "0", "DATA.RE_PROB", "0.5",
            "MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu",
            "MODEL.SHARED_FROM", "1", "MODEL.LAST_STRIDE", "2",
            "LOSS.TERMS", "id,triplet,center,modality_id,kl",
            "TRAIN.OPTIMIZER", "adam", "TRAIN.BASE_LR", "0.001", "TRAIN.MAX_EPOCHS", "3",
            "TRAIN.ITERS_PER_EPOCH", "2", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.STEPS", "",
            "TRAIN.CHECKPOINT_PERIOD", "1", "TRAIN.EVAL_PERIOD", "0",
            "TRAIN.DETERMINISTIC", "yes", "TRAIN.OUTPUT_PATH", str(out), *extra]


class Killed(Exception):
    """Stands for the process being killed in the middle of an epoch."""


def kill_at_step(monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    """Make the ``step``-th optimizer step (1-based) of the next run raise ``Killed``."""
    real = Trainer.train_step
    calls = {"n": 0}

    def step_or_die(self: Trainer, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            raise Killed
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "train_step", step_or_die)


def assert_same_state(a: dict, b: dict) -> None:
    for name in ("model", "criterion"):
        assert a[name].keys() == b[name].keys()
        for key in a[name]:
            assert torch.equal(a[name][key], b[name][key]), f"{name}.{key} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(torch.as_tensor(sa[key]), torch.as_tensor(sb[key]))
    assert a["scheduler"]["last_epoch"] == b["scheduler"]["last_epoch"]
    assert (a["epoch"], a["iteration"]) == (b["epoch"], b["iteration"])


def _losses(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("loss") or k == "epoch"} for r in rows]


@pytest.fixture(scope="module")
def uninterrupted(regdb_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    cfg = load_config(None, tiny_opts(regdb_root, out))
    train_and_test(cfg, None, DistInfo(), CPU)
    return out


def test_killed_mid_epoch_and_resumed_run_ends_with_identical_weights(
        regdb_root: Path, uninterrupted: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_config(None, tiny_opts(regdb_root, tmp_path))
    kill_at_step(monkeypatch, 6)  # epoch 3, second step: epoch 2's checkpoint is the last one
    with pytest.raises(Killed):
        train_and_test(cfg, None, DistInfo(), CPU)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 2
    train_and_test(cfg, tmp_path / "last.pth", DistInfo(), CPU)

    a = torch.load(uninterrupted / "last.pth", weights_only=True)
    b = torch.load(tmp_path / "last.pth", weights_only=True)
    assert_same_state(a, b)
    assert any(k.endswith("centers") for k in b["criterion"])  # the centres were compared
    # metrics.jsonl: the replayed epoch is written once, with the same losses.
    assert _losses(tmp_path / "metrics.jsonl") == _losses(uninterrupted / "metrics.jsonl")
    ra = json.loads((uninterrupted / "results.json").read_text())
    rb = json.loads((tmp_path / "results.json").read_text())
    assert ra["settings"] == rb["settings"]
    assert "resumed from" in (tmp_path / "log.txt").read_text()


def test_cli_resume_with_a_loader_worker_matches_too(regdb_root: Path, uninterrupted: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Augmentations are seeded per sample, so a worker process changes nothing.
    ini = tmp_path / "tiny.ini"
    ini.write_text(config_to_ini(load_config(None, tiny_opts(regdb_root, tmp_path))))
    opts = ["DATA.NUM_WORKERS", "1"]
    kill_at_step(monkeypatch, 3)  # epoch 2, first step
    with pytest.raises(Killed):
        main_regdb(["--config", str(ini), *opts])
    monkeypatch.undo()
    run = tmp_path / "trial_1"
    assert load_checkpoint(run / "last.pth")["epoch"] == 1
    assert main_regdb(["--config", str(ini), "--resume", *opts]) == 0
    assert_same_state(torch.load(uninterrupted / "last.pth", weights_only=True),
                      torch.load(run / "last.pth", weights_only=True))


def test_resume_refuses_another_model_and_logs_allowed_changes(
        regdb_root: Path, uninterrupted: Path, tmp_path: Path) -> None:
    ckpt = uninterrupted / "last.pth"
    other = load_config(None, tiny_opts(regdb_root, tmp_path, "MODEL.SHARED_FROM", "0"))
    with pytest.raises(UserError, match=r"different model \(MODEL\.SHARED_FROM: 1 -> 0\)"):
        train_and_test(other, ckpt, DistInfo(), CPU)
    no_heads = load_config(None, tiny_opts(regdb_root, tmp_path, "LOSS.TERMS", "id,triplet"))
    with pytest.raises(UserError, match=r"loss or optimizer settings .*LOSS\.TERMS"):
        train_and_test(no_heads, ckpt, DistInfo(), CPU)
    # A longer run continues the finished one by one epoch.
    longer = load_config(None, tiny_opts(regdb_root, tmp_path, "TRAIN.MAX_EPOCHS", "4"))
    train_and_test(longer, ckpt, DistInfo(), CPU)
    log = (tmp_path / "log.txt").read_text()
    assert "config changed since the checkpoint: TRAIN.MAX_EPOCHS 3 -> 4" in log
    final = load_checkpoint(tmp_path / "last.pth")
    assert (final["epoch"], final["iteration"]) == (4, 8)
    assert [r["epoch"] for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text()
                                    .splitlines())] == [4]


def test_resume_without_a_checkpoint_is_a_clear_error(regdb_root: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    opts = tiny_opts(regdb_root, tmp_path)
    with pytest.raises(UserError, match=r"no checkpoint to resume at .*trial_1/last\.pth"):
        main_regdb(["--config", CONFIG, "--resume", *opts])
    with pytest.raises(UserError, match="checkpoint not found"):
        main_regdb(["--config", CONFIG, "--resume", str(tmp_path / "nope.pth"), *opts])
