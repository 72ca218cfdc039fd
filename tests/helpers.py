"""Helpers shared by the tests of the entry scripts: test.py as a module, random-weight
checkpoints in the training format."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from modeling import build_model
from utils.config import config_to_ini, load_config
from utils.io import atomic_torch_save

REPO = Path(__file__).resolve().parents[1]
# A small network on small images, no downloads, no workers.
SMALL = ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "DATA.SIZE_TEST", "32,16",
         "DATA.SIZE_TRAIN", "32,16", "DATA.NUM_WORKERS", "0", "DATA.TEST_BATCH_SIZE", "64",
         "DATA.VERIFY_IMAGES", "no", "MODEL.DEVICE", "cpu"]


def load_test_script(name: str) -> ModuleType:
    """``test.py`` imported as a module named ``name``."""
    spec = importlib.util.spec_from_file_location(name, REPO / "test.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(script: ModuleType, monkeypatch: pytest.MonkeyPatch,
               capsys: pytest.CaptureFixture, *argv: str) -> tuple[int, str, str]:
    """Run ``script.main()`` with ``argv``; return (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["test.py", *argv])
    with pytest.raises(SystemExit) as exc:
        script.main()
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def save_random_checkpoint(path: Path, dataset: str, root: Path, *overrides: str,
                           num_classes: int = 4, model_overrides: tuple[str, ...] = ()) -> Path:
    """A checkpoint in the training format with random weights (seed 0); its saved config
    has ``overrides``, its weights also ``model_overrides`` (to make them not fit)."""
    cfg = load_config(None, ["DATA.DATASET_NAME", dataset, "DATA.ROOT", str(root), *SMALL,
                             *overrides])
    model_cfg = load_config(None, ["DATA.DATASET_NAME", dataset, *SMALL, *overrides,
                                   *model_overrides])
    torch.manual_seed(0)
    model = build_model(model_cfg, num_classes)
    atomic_torch_save({"model": model.state_dict(), "config": config_to_ini(cfg),
                       "num_classes": num_classes, "epoch": 1, "iteration": 1}, path)
    return path


def tiny_training(name: str, root: Path, out: Path, *extra: str) -> list[str]:
    """Overrides of a two-epoch, two-step run of a small network on ``name`` at ``root``."""
    return ["DATA.DATASET_NAME", name, "DATA.ROOT", str(root), *SMALL, "DATA.PADDING", "2",
            "DATA.TRAIN_BATCH_SIZE", "8", "DATA.SAMPLE_ID_INSTANCE", "2",
            "TRAIN.BASE_LR", "0.001", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "",
            "TRAIN.MAX_EPOCHS", "2", "TRAIN.ITERS_PER_EPOCH", "2", "TRAIN.OUTPUT_PATH",
            str(out), *extra]
