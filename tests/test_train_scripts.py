"""train_regdb.py (trials and summary), train_llcm.py, and the command-line behaviour."""
from __future__ import annotations

import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest

from engine.cli import AUTO, parse_train_args, parse_trials, train_parser
from engine.launch import train_main
from utils.config import config_to_ini, load_config
from utils.errors import UserError

main_llcm = partial(train_main, "train_llcm.py", "llcm")
main_regdb = partial(train_main, "train_regdb.py", "regdb")

REPO = Path(__file__).resolve().parents[1]


def tiny_ini(tmp: Path, root: Path, dataset: str, *extra: str) -> Path:
    cfg = load_config(None, [
        "DATA.DATASET_NAME", dataset, "DATA.ROOT", str(root), "DATA.SIZE_TRAIN", "32,16",
        "DATA.SIZE_TEST", "32,16", "DATA.TRAIN_BATCH_SIZE", "8", "DATA.NUM_WORKERS", "0",
        "MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu",
        "MODEL.LAST_STRIDE", "2", "TRAIN.MAX_EPOCHS", "1", "TRAIN.ITERS_PER_EPOCH", "2",
        "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "", "TRAIN.EVAL_PERIOD", "0",
        "TEST.NUM_TRIALS", "2", "TRAIN.OUTPUT_PATH", str(tmp / "out"), *extra])
    path = tmp / f"{dataset}.ini"
    path.write_text(config_to_ini(cfg))
    return path


def test_regdb_trials_one_model_each_and_a_summary(regdb_root: Path, tmp_path: Path) -> None:
    ini = tiny_ini(tmp_path, regdb_root, "regdb")
    assert main_regdb(["--config", str(ini), "--trial", "1,2"]) == 0
    out = tmp_path / "out"
    per_trial = {}
    for t in (1, 2):
        res = json.loads((out / f"trial_{t}" / "results.json").read_text())
        assert res["protocol"]["regdb_trial"] == t
        assert load_config(out / f"trial_{t}" / "config.ini").DATA.TRIAL == t
        assert (out / f"trial_{t}" / "last.pth").is_file()
        per_trial[t] = res["settings"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trials"] == [1, 2]
    for direction in ("visible-to-thermal", "thermal-to-visible"):
        table = summary["summary"][direction]
        assert set(table) == {"R1", "R10", "R20", "mAP", "mINP"}
        r1 = [per_trial[t][direction]["mean"]["R1"] for t in (1, 2)]
        assert table["R1"]["values"] == r1
        assert table["R1"]["mean"] == pytest.approx(sum(r1) / 2, abs=1e-3)
        assert table["R1"]["std"] == pytest.approx(abs(r1[0] - r1[1]) / 2 ** 0.5, abs=1e-3)
    text = (out / "summary.txt").read_text()
    assert "visible-to-thermal" in text and "±" in text and "trials 1, 2" in text


def test_llcm_script_trains_and_tests_both_directions(llcm_root: Path, tmp_path: Path) -> None:
    ini = tiny_ini(tmp_path, llcm_root, "llcm")
    assert main_llcm(["--config", str(ini)]) == 0
    res = json.loads((tmp_path / "out" / "results.json").read_text())
    assert list(res["settings"]) == ["infrared-to-visible", "visible-to-infrared"]
    assert len(res["settings"]["infrared-to-visible"]["trials"]) == 2
    assert res["selection"] == {"select": "last", "epoch": 1, "note": "final epoch",
                                "best_metric": None}


def test_entry_scripts_report_user_errors_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "train_sysumm.py", "--config", "configs/res50/regdb.ini"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: train_sysumm.py trains sysumm but the config has "
                                   "DATA.DATASET_NAME = regdb; use train.py, which trains any "
                                   "dataset")
    proc = subprocess.run(
        [sys.executable, "train_regdb.py", "--config", str(tmp_path / "missing.ini")],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().endswith("missing.ini: config file not found")


def test_command_line_parsing() -> None:
    parser = train_parser("train_regdb.py", "RegDB", trials=True)
    cfg_path = str(REPO / "configs" / "res50/regdb.ini")
    args, cfg = parse_train_args(parser, ["--config", cfg_path, "--resume",
                                          "TRAIN.MAX_EPOCHS", "7"])
    assert args.resume == AUTO and cfg.TRAIN.MAX_EPOCHS == 7
    args, cfg = parse_train_args(parser, ["--config", cfg_path, "--resume", "run/last.pth",
                                          "TRAIN.MAX_EPOCHS", "7"])
    assert args.resume == "run/last.pth" and cfg.TRAIN.MAX_EPOCHS == 7
    # Options after the overrides are options, not override keys.
    args, cfg = parse_train_args(parser, ["--config", cfg_path, "TRAIN.MAX_EPOCHS", "7",
                                          "--trial", "all", "TRAIN.SEED", "3"])
    assert args.trial == "all" and (cfg.TRAIN.MAX_EPOCHS, cfg.TRAIN.SEED) == (7, 3)
    # One parser for training splits (bounded) and test galleries (any trial >= 1).
    assert parse_trials(None, 10) is None
    assert parse_trials("all", 10) == list(range(1, 11))
    assert parse_trials("all", None) is None  # every trial of the protocol
    assert parse_trials("2, 1, 2", 10) == [2, 1]
    assert parse_trials("12", None) == [12]
    with pytest.raises(UserError, match=r"--trial 11: expected a trial number 1\.\.10"):
        parse_trials("11", 10)
    with pytest.raises(UserError, match=r"--trial 0: expected a trial number >= 1"):
        parse_trials("0", None)
