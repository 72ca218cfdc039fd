"""test.py on another dataset than the checkpoint's: that dataset's protocol, the
checkpoint's embedding, and ``trained_on`` in the results."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import data
from engine.evaluate import evaluate
from modeling import build_model
from tests.helpers import SMALL, load_test_script, run_script, save_random_checkpoint
from utils.config import load_config

NUM_CLASSES = 5
TWO_TRIALS = ("TEST.NUM_TRIALS", "2")

pytestmark = pytest.mark.usefixtures("one_thread")
SCRIPT = load_test_script("vireid_test_script_cross")


def save_checkpoint(path: Path, dataset: str, root: Path, *overrides: str) -> Path:
    return save_random_checkpoint(path, dataset, root, *TWO_TRIALS, *overrides,
                                  num_classes=NUM_CLASSES)


def run_test(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    return run_script(SCRIPT, monkeypatch, capsys, *argv)


@pytest.fixture(scope="module")
def sysu_ckpt(sysu_root, tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "sysu.pth", "sysumm", sysu_root)


def test_sysu_checkpoint_tested_on_llcm(sysu_ckpt, llcm_root, tmp_path, monkeypatch, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_test(monkeypatch, capsys, "--model_path", str(sysu_ckpt),
                              "--output", str(out_json),
                              "DATA.DATASET_NAME", "llcm", "DATA.ROOT", str(llcm_root))
    assert code == 0, err
    assert "cross-dataset test: trained on sysumm, tested on llcm" in out
    res = json.loads(out_json.read_text())
    assert res["trained_on"] == "sysumm" and res["dataset"] == "llcm"
    assert list(res["settings"]) == ["infrared-to-visible", "visible-to-infrared"]
    assert res["headline"]["setting"] == "infrared-to-visible"
    assert {e["rule"] for e in res["settings"].values()} == {"llcm"}
    assert res["protocol"]["gallery_trials"] == [1, 2]

    # The figures are those of the checkpoint's weights under LLCM's protocol.
    cfg = load_config(None, ["DATA.DATASET_NAME", "llcm", "DATA.ROOT", str(llcm_root), *SMALL,
                             *TWO_TRIALS])
    model = build_model(cfg, NUM_CLASSES)
    model.load_state_dict(torch.load(sysu_ckpt, weights_only=True)["model"])
    direct = evaluate(cfg, model.eval(), data.build_dataset(cfg, verbose=False, need_train=False))
    assert res["settings"] == direct["settings"]


def test_regdb_checkpoint_tested_on_sysu(regdb_root, sysu_root, tmp_path, monkeypatch, capsys):
    ckpt = save_checkpoint(tmp_path / "regdb.pth", "regdb", regdb_root, "DATA.TRIAL", "3")
    out_json = tmp_path / "r.json"
    code, out, err = run_test(monkeypatch, capsys, "--model_path", str(ckpt), "--trial", "2",
                              "--mode", "all", "--output", str(out_json),
                              "DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(sysu_root))
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert res["trained_on"] == "regdb" and res["dataset"] == "sysumm"
    assert list(res["settings"]) == ["all-search single-shot", "all-search multi-shot"]
    # --trial is a gallery trial of SYSU-MM01, whatever it meant for the checkpoint.
    assert [t["trial"] for t in res["settings"]["all-search single-shot"]["trials"]] == [2]


def test_split_trial_mismatch_is_checked_within_one_dataset_only(
        sysu_ckpt, regdb_root, tmp_path, monkeypatch, capsys):
    # The SYSU-MM01 checkpoint's DATA.TRIAL (1) says nothing about RegDB's splits.
    code, out, err = run_test(monkeypatch, capsys, "--model_path", str(sysu_ckpt), "--trial",
                              "2", "--output", str(tmp_path / "r.json"),
                              "DATA.DATASET_NAME", "regdb", "DATA.ROOT", str(regdb_root))
    assert code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    assert res["trained_on"] == "sysumm" and res["protocol"]["regdb_trial"] == 2
    assert list(res["settings"]) == ["visible-to-thermal", "thermal-to-visible"]
    assert "RegDB trial 2" in out

    own = save_checkpoint(tmp_path / "regdb.pth", "regdb", regdb_root)
    code, _, err = run_test(monkeypatch, capsys, "--model_path", str(own), "--trial", "2")
    assert code == 2 and "trained on RegDB trial 1; testing it on trial 2" in err
    code, _, err = run_test(monkeypatch, capsys, "--model_path", str(own), "--trial", "1",
                            "--output", str(tmp_path / "same.json"))
    assert code == 0, err
    assert "trained_on" not in json.loads((tmp_path / "same.json").read_text())


def test_another_datasets_model_is_tested_on_several_splits(sysu_ckpt, regdb_root, tmp_path,
                                                            monkeypatch, capsys):
    out_json = tmp_path / "r.json"
    code, out, err = run_test(monkeypatch, capsys, "--model_path", str(sysu_ckpt), "--trial",
                              "1,2", "--output", str(out_json),
                              "DATA.DATASET_NAME", "regdb", "DATA.ROOT", str(regdb_root))
    assert code == 0, err
    res = json.loads(out_json.read_text())
    assert res["checkpoint"] == [str(sysu_ckpt)] * 2 and res["trained_on"] == "sysumm"
    trials = res["settings"]["visible-to-thermal"]["trials"]
    assert [t["trial"] for t in trials] == [1, 2]
    # One model of RegDB's own is trained on one split: several need {trial}.
    own = save_checkpoint(tmp_path / "regdb.pth", "regdb", regdb_root)
    code, _, err = run_test(monkeypatch, capsys, "--model_path", str(own), "--trial", "1,2")
    assert code == 2 and "put {trial} in --model-path" in err
    # A bad --trial is named as such before any file is looked for.
    code, _, err = run_test(monkeypatch, capsys, "--model_path",
                            str(tmp_path / "trial_{trial}.pth"), "--trial", "0")
    assert code == 2 and "--trial 0: expected a trial number" in err
