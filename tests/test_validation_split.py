"""DATA.VAL_IDS: identities held out of training as a validation split, on every dataset."""
from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

import data
from data.base import VIReIDDataset
from engine.distributed import DistInfo
from engine.launch import train_and_test, train_main
from tests.helpers import tiny_training
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError, cli_entry

pytestmark = pytest.mark.usefixtures("one_thread")

ROOTS = {"regdb": "regdb_root", "sysumm": "sysu_root", "llcm": "llcm_root"}


@pytest.fixture(params=sorted(ROOTS))
def named_root(request: pytest.FixtureRequest) -> tuple[str, Path]:
    return request.param, request.getfixturevalue(ROOTS[request.param])


def read(name: str, root: Path, *overrides: str) -> VIReIDDataset:
    cfg = load_config(None, ["DATA.DATASET_NAME", name, "DATA.ROOT", str(root),
                             "DATA.VERIFY_IMAGES", "no", *overrides])
    return data.build_dataset(cfg, verbose=False)


def as_tuples(records, label=None) -> set[tuple]:
    label = label or (lambda pid: pid)
    return {(r.path, label(r.pid), r.cam, r.modality) for r in records}


def test_held_out_ids_leave_training_with_both_modalities(named_root):
    name, root = named_root
    base = read(name, root)
    held = read(name, root, "DATA.VAL_IDS", "3")
    assert not base.has_val and held.has_val
    assert held.num_classes == base.num_classes - 3
    assert sorted({r.pid for r in held.train}) == list(range(held.num_classes))

    val = held.eval_sets("val")
    assert set(val) == {"visible", "infrared"}
    assert {r.modality for r in val["visible"]} == {VISIBLE}
    assert {r.modality for r in val["infrared"]} == {INFRARED}
    ids = {r.pid for r in val["visible"]}
    assert len(ids) == 3 and {r.pid for r in val["infrared"]} == ids
    # Every training image of those ids, and nothing else, moves to the val split.
    assert as_tuples(val["visible"] + val["infrared"]) == as_tuples(
        r for r in base.train if r.pid in ids)
    kept = sorted({r.pid for r in base.train} - ids)
    relabel = {pid: i for i, pid in enumerate(kept)}.__getitem__
    assert as_tuples(held.train) == as_tuples(
        (r for r in base.train if r.pid not in ids), relabel)
    assert held.test_sets == base.test_sets

    # The draw does not depend on TRAIN.SEED: seeds compare on one val split.
    other_seed = read(name, root, "DATA.VAL_IDS", "3", "TRAIN.SEED", "9")
    assert as_tuples(other_seed.eval_sets("val")["infrared"]) == as_tuples(val["infrared"])


def test_select_val_keeps_the_best_epoch_on_the_val_ids(named_root, tmp_path):
    name, root = named_root
    cfg = load_config(None, tiny_training(name, root, tmp_path, "DATA.VAL_IDS", "2",
                                     "TRAIN.SELECT", "val", "TRAIN.EVAL_PERIOD", "1"))
    results = train_and_test(cfg, None, DistInfo(), torch.device("cpu"))
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in rows]
    assert [e["split"] for e in evals] == ["val", "val"]
    assert {e["purpose"] for e in evals} == {"model selection on the held-out val ids"}
    best = 1 if evals[0]["score"] >= evals[1]["score"] else 2  # the first best epoch wins
    assert results["selection"]["select"] == "val"
    assert results["selection"]["epoch"] == best
    assert results["selection"]["best_metric"] == evals[best - 1]["score"]
    assert results["checkpoint"] == str(tmp_path / "best.pth")
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == best
    assert json.loads((tmp_path / "results.json").read_text())["split"] == "test"


def test_too_many_val_ids_are_refused(regdb_root, llcm_root):
    assert read("regdb", regdb_root, "DATA.VAL_IDS", "6").num_classes == 2
    with pytest.raises(UserError, match=r"^DATA.VAL_IDS = 7: the training set of RegDB trial 1 "
                                        r"has 8 identities; at least 2 must remain"):
        read("regdb", regdb_root, "DATA.VAL_IDS", "7")
    with pytest.raises(UserError, match=r"DATA.VAL_IDS = 40: the training set of LLCM has 8 "):
        read("llcm", llcm_root, "DATA.VAL_IDS", "40")


def test_val_ids_next_to_sysus_own_val_split_are_refused(sysu_root):
    own = read("sysumm", sysu_root, "DATA.SYSU_VAL_AS_TRAIN", "no")
    assert own.has_val
    with pytest.raises(UserError, match=r"DATA.VAL_IDS = 2: SYSU-MM01 \(train ids, val held "
                                        r"out\) already holds out its own val split"):
        read("sysumm", sysu_root, "DATA.SYSU_VAL_AS_TRAIN", "no", "DATA.VAL_IDS", "2")


def test_select_val_without_a_val_split_is_one_line(named_root, tmp_path, monkeypatch, capsys):
    name, root = named_root
    ini = tmp_path / "run.ini"
    ini.write_text("[TRAIN]\nSELECT = val\n")
    monkeypatch.setattr(sys, "argv", ["train.py", "--config", str(ini),
                                      *tiny_training(name, root, tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(partial(train_main, "train.py", None))()
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "has no validation split: set DATA.VAL_IDS" in lines[0], lines
    assert not list((tmp_path / "out").rglob("*.pth"))
