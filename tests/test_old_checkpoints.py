"""Checkpoints and run folders written before keys moved into method sections still work:
test.py, --resume, MODEL.PRETRAIN_PATH and imported models read their saved configs (a
text fixture saved by that version), and their networks keep their state-dict keys."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from engine.trainer import Trainer
from modeling import build_model
from tests.helpers import load_test_script, run_script
from utils.config import config_from_ini_text, config_to_ini, load_config
from utils.io import atomic_torch_save

FIXTURES = Path(__file__).resolve().parent / "fixtures"
OLD_DEEN = (FIXTURES / "saved_config_deen_v1.ini").read_text()
OLD_KEYS = json.loads((FIXTURES / "state_keys_v1.json").read_text())
SCRIPT = load_test_script("vireid_test_old")

pytestmark = pytest.mark.usefixtures("one_thread")


def test_old_networks_keep_their_state_dict_keys():
    deen = build_model(config_from_ini_text(OLD_DEEN), 4).state_dict()
    assert {k: list(v.shape) for k, v in deen.items()} == OLD_KEYS["deen"]
    agw_text = (FIXTURES / "saved_config_agw_v1.ini").read_text().replace(
        "NAME = resnet18", "NAME = resnet50")
    agw = build_model(config_from_ini_text(agw_text), 4).state_dict()
    assert {k: list(v.shape) for k, v in agw.items()} == OLD_KEYS["agw_resnet50"]


def old_deen(root: Path) -> str:
    """The fixture's saved config pointed at a synthetic SYSU-MM01 and made tiny."""
    return (OLD_DEEN.replace("ROOT = /data/SYSU-MM01", f"ROOT = {root}")
            .replace("SIZE_TRAIN = 64, 32", "SIZE_TRAIN = 32, 16")
            .replace("SIZE_TEST = 64, 32", "SIZE_TEST = 32, 16")
            .replace("VERIFY_IMAGES = yes", "VERIFY_IMAGES = no"))


@pytest.fixture()
def old_checkpoint(sysu_root, tmp_path) -> Path:
    text = old_deen(sysu_root)
    assert text.startswith("# Merged configuration: defaults")  # format 1
    torch.manual_seed(0)
    model = build_model(config_from_ini_text(text), 4)
    path = tmp_path / "old.pth"
    atomic_torch_save({"model": model.state_dict(), "config": text, "num_classes": 4,
                       "epoch": 1, "iteration": 1}, path)
    return path


def test_test_script_reads_an_old_checkpoint(old_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run_script(SCRIPT, monkeypatch, capsys, "--model_path",
                                 str(old_checkpoint), "--trial", "1", "--mode", "all",
                                 "--shots", "1", "--output", str(out))
    assert code == 0
    results = json.loads(out.read_text())
    assert results["protocol"]["views"] == "all"  # DEEN's expansion, read from MODEL.DEE_*
    assert "all-search single-shot" in results["settings"]


def test_pretrain_path_takes_an_old_checkpoint(old_checkpoint):
    cfg = config_from_ini_text(old_deen(Path("/data")))
    fresh = build_model(load_config(None, [*_pairs(cfg), "MODEL.PRETRAIN_PATH",
                                           str(old_checkpoint)]), 4)
    saved = torch.load(old_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())


def _pairs(cfg) -> list[str]:
    """The config as command-line pairs (every key)."""
    text = config_to_ini(cfg)
    loaded = config_from_ini_text(text)
    out = []
    for section in loaded:
        for key, value in loaded[section].items():
            formatted = ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)
            if isinstance(value, bool):
                formatted = "yes" if value else "no"
            out += [f"{section}.{key}", formatted]
    return out


def test_resume_from_a_run_saved_by_the_old_version(sysu_root, tmp_path):
    import data

    text = old_deen(sysu_root).replace("OUTPUT_PATH = ./output/deen_small",
                                       f"OUTPUT_PATH = {tmp_path / 'run'}")
    changes = {"ITERS_PER_EPOCH = 0": "ITERS_PER_EPOCH = 1",
               "MAX_EPOCHS = 151": "MAX_EPOCHS = 2", "WARMUP_EPOCHS = 10": "WARMUP_EPOCHS = 0",
               "STEPS = 20, 80": "STEPS = ", "EVAL_PERIOD = 10": "EVAL_PERIOD = 0",
               "TRAIN_BATCH_SIZE = 48": "TRAIN_BATCH_SIZE = 16"}
    for old, new in changes.items():
        assert old in text
        text = text.replace(old, new)
    (tmp_path / "config.ini").write_text(text)
    cfg = load_config(tmp_path / "config.ini")
    dataset = data.build_dataset(cfg, verbose=False)
    first = Trainer(cfg, dataset, torch.device("cpu"))
    first.train_one_epoch(1)
    state = first.state_dict()
    state["config"] = text  # the run folder's config.ini of the old version (format 1)
    atomic_torch_save(state, tmp_path / "last.pth")
    again = Trainer(cfg, dataset, torch.device("cpu"))
    again.resume(tmp_path / "last.pth")
    assert again.epoch == 1
