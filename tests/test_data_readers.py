"""Dataset readers on generated RegDB / SYSU-MM01 / LLCM trees, including broken ones."""
from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data import DATASETS, build_dataset
from data.llcm import LLCM
from data.protocols import group_by_id_camera
from data.regdb import THERMAL_CAM as REGDB_THERMAL_CAM
from data.regdb import VISIBLE_CAM as REGDB_VISIBLE_CAM
from data.regdb import RegDB
from data.sysu import IR_CAMS as SYSU_IR_CAMS
from data.sysu import RGB_CAMS as SYSU_RGB_CAMS
from data.sysu import SYSUMM01
from data.transforms import load_image
from utils.config import get_default_config, load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError


def cfg_for(name: str, root: Path | str, *overrides: str):
    return load_config(None, ["DATA.DATASET_NAME", name, "DATA.ROOT", str(root), *overrides])


def copy_tree(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / src.name
    shutil.copytree(src, dst)
    return dst


def read_lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


# ---------------------------------------------------------------- RegDB

def test_regdb_reads_trial(regdb_root: Path, capsys) -> None:
    ds = build_dataset(cfg_for("regdb", regdb_root, "DATA.TRIAL", "3"))
    out = capsys.readouterr().out
    assert "RegDB trial 3" in out and "test infrared" in out
    assert isinstance(ds, RegDB) and ds.name == "regdb" and ds.root == str(regdb_root)
    assert ds.num_classes == 8
    assert sorted({r.pid for r in ds.train}) == list(range(8))
    vis = [r for r in ds.train if r.modality == VISIBLE]
    ir = [r for r in ds.train if r.modality == INFRARED]
    assert len(vis) == len(ir) == 32
    assert {r.cam for r in vis} == {REGDB_VISIBLE_CAM}
    assert {r.cam for r in ir} == {REGDB_THERMAL_CAM}
    # Test pids are the file's labels (the dataset's pids, 1..16 here).
    lines = read_lines(regdb_root / "idx" / "test_visible_3.txt")
    assert [r.pid for r in ds.test_sets["visible"]] == [int(li.split()[1]) for li in lines]
    assert [r.path for r in ds.test_sets["visible"]] == [str(regdb_root / li.split()[0])
                                                         for li in lines]
    assert {r.modality for r in ds.test_sets["infrared"]} == {INFRARED}
    other = RegDB(regdb_root, cfg_for("regdb", regdb_root, "DATA.TRIAL", "4"), verbose=False)
    assert {r.path for r in other.test_sets["visible"]} != {r.path for r in ds.test_sets["visible"]}


def test_thermal_single_channel_loads_as_three(regdb_root: Path) -> None:
    ds = RegDB(regdb_root, cfg_for("regdb", regdb_root), verbose=False)
    path = ds.test_sets["infrared"][0].path
    assert Image.open(path).mode == "L"
    img = load_image(path, (32, 16))
    assert img.shape == (32, 16, 3) and img.dtype == np.uint8
    assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 0], img[..., 2])
    assert load_image(ds.test_sets["visible"][0].path, (64, 32)).shape == (64, 32, 3)


def test_regdb_test_only_skips_training_files(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    (root / "idx" / "train_visible_1.txt").unlink()
    ds = build_dataset(cfg_for("regdb", root), verbose=False, need_train=False)
    assert ds.train == [] and ds.num_classes == 0 and len(ds.test_sets["visible"]) == 32
    with pytest.raises(UserError, match=r"RegDB trial 1: split file .*train_visible_1.txt not "
                                        r"found"):
        build_dataset(cfg_for("regdb", root), verbose=False)


def test_unknown_dataset_lists_valid_names(tmp_path: Path) -> None:
    cfg = get_default_config()
    cfg.DATA.DATASET_NAME = "market1501"
    cfg.DATA.ROOT = str(tmp_path)
    with pytest.raises(UserError, match="market1501.*valid names: llcm, regdb, sysumm"):
        build_dataset(cfg)
    assert set(DATASETS) == {"regdb", "sysumm", "llcm"}


@pytest.mark.parametrize("name", ["regdb", "sysumm", "llcm"])
def test_missing_root(name: str, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"dataset root {missing} does not exist"):
        build_dataset(cfg_for(name, missing))


def test_bad_split_line(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    f = root / "idx" / "train_thermal_1.txt"
    lines = read_lines(f)
    lines[4] = lines[4].split()[0] + " seven"
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train_thermal_1.txt line 5: expected '<relative image "
                                        r"path> <integer label>', got '.* seven'"):
        build_dataset(cfg_for("regdb", root), verbose=False)


def test_listed_image_missing(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    rel = read_lines(root / "idx" / "test_thermal_1.txt")[2].split()[0]
    (root / rel).unlink()
    with pytest.raises(UserError, match=rf"test_thermal_1.txt line 3: image {root / rel} not "
                                        r"found"):
        build_dataset(cfg_for("regdb", root), verbose=False)


def test_image_that_does_not_decode(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    rel = read_lines(root / "idx" / "train_visible_1.txt")[0].split()[0]
    (root / rel).write_bytes(b"not an image at all")
    with pytest.raises(UserError, match=rf"image {root / rel} does not decode"):
        build_dataset(cfg_for("regdb", root), verbose=False)
    # Without the header check the reader accepts it; decoding names the file.
    ds = build_dataset(cfg_for("regdb", root, "DATA.VERIFY_IMAGES", "no"), verbose=False)
    with pytest.raises(UserError, match=rf"image {root / rel} does not decode"):
        load_image(ds.train[0].path, (64, 32))


def test_empty_split_file(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    (root / "idx" / "test_visible_2.txt").write_text("\n")
    with pytest.raises(UserError, match=r"RegDB trial 2: split file .*test_visible_2.txt lists no"):
        build_dataset(cfg_for("regdb", root, "DATA.TRIAL", "2"), verbose=False)


def test_one_modality_identity_left_out(regdb_root: Path, tmp_path: Path, caplog) -> None:
    root = copy_tree(regdb_root, tmp_path)
    f = root / "idx" / "train_thermal_1.txt"
    f.write_text("\n".join(li for li in read_lines(f) if li.split()[1] != "0") + "\n")
    with caplog.at_level(logging.WARNING, logger="data.base"):
        ds = build_dataset(cfg_for("regdb", root), verbose=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "only one modality" in warnings[0] and ": 0" in warnings[0]
    assert ds.num_classes == 7 and sorted({r.pid for r in ds.train}) == list(range(7))
    kept = {os.path.basename(r.path) for r in ds.train}
    first_pid_files = [li.split()[0] for li in read_lines(root / "idx" / "train_visible_1.txt")
                       if li.split()[1] == "0"]
    assert not kept & {os.path.basename(p) for p in first_pid_files}


# ---------------------------------------------------------------- SYSU-MM01

def _sysu_ids(root: Path, split: str) -> list[int]:
    return [int(t) for t in (root / "exp" / f"{split}_id.txt").read_text().strip().split(",")]


def test_sysu_train_val_and_test(sysu_root: Path) -> None:
    ds = build_dataset(cfg_for("sysumm", sysu_root), verbose=False)
    assert isinstance(ds, SYSUMM01) and ds.name == "sysumm"
    train_ids = sorted(_sysu_ids(sysu_root, "train") + _sysu_ids(sysu_root, "val"))
    assert ds.num_classes == len(train_ids) == 12
    # Relabelled in sorted pid order: label i <-> i-th smallest pid (read from the path).
    for r in ds.train:
        assert int(Path(r.path).parent.name) == train_ids[r.pid]
        assert r.modality == (INFRARED if r.cam in SYSU_IR_CAMS else VISIBLE)
    test_ids = set(_sysu_ids(sysu_root, "test"))
    query = ds.test_sets["infrared"]
    assert {r.pid for r in query} == test_ids and {r.cam for r in query} <= set(SYSU_IR_CAMS)
    assert {r.cam for r in ds.test_sets["visible"]} <= set(SYSU_RGB_CAMS)
    expected_q = sorted(str(p) for c in SYSU_IR_CAMS for pid in test_ids
                        for p in (sysu_root / f"cam{c}" / f"{pid:04d}").glob("*.jpg"))
    assert sorted(r.path for r in ds.test_sets["infrared"]) == expected_q
    for records in (ds.test_sets["infrared"], ds.test_sets["visible"]):
        keys = [(r.cam, r.pid, os.path.basename(r.path)) for r in records]
        assert keys == sorted(keys)
    assert ds.val_sets.get("infrared", []) == [] and ds.val_sets.get("visible", []) == []


def test_sysu_val_held_out(sysu_root: Path) -> None:
    ds = SYSUMM01(sysu_root, cfg_for("sysumm", sysu_root, "DATA.SYSU_VAL_AS_TRAIN", "no"),
                  verbose=False)
    val_ids = set(_sysu_ids(sysu_root, "val"))
    assert ds.num_classes == 8
    assert {r.pid for r in ds.val_sets.get("infrared", [])} == val_ids
    assert {r.cam for r in ds.val_sets.get("infrared", [])} <= set(SYSU_IR_CAMS)
    assert {r.cam for r in ds.val_sets.get("visible", [])} <= set(SYSU_RGB_CAMS)
    assert "val held out" in ds.describe()


def test_sysu_group_by_id_camera(sysu_root: Path) -> None:
    ds = SYSUMM01(sysu_root, cfg_for("sysumm", sysu_root), verbose=False, need_train=False)
    pool = ds.test_sets["visible"]
    groups = {(cam, pid): [pool[i] for i in idx]
              for (pid, cam), idx in group_by_id_camera(pool).items()}
    assert sum(len(v) for v in groups.values()) == len(pool)
    for (cam, pid), recs in groups.items():
        names = sorted(os.listdir(sysu_root / f"cam{cam}" / f"{pid:04d}"))
        assert [os.path.basename(r.path) for r in recs] == names  # i-th image = names[i - 1]
        assert {(r.cam, r.pid) for r in recs} == {(cam, pid)}


def test_sysu_errors(sysu_root: Path, tmp_path: Path) -> None:
    root = copy_tree(sysu_root, tmp_path)
    (root / "exp" / "val_id.txt").write_text("1,2,x3\n")
    with pytest.raises(UserError, match=r"val_id.txt line 1: expected comma-separated integer ids,"
                                        r" got 'x3'"):
        build_dataset(cfg_for("sysumm", root), verbose=False)
    (root / "exp" / "val_id.txt").unlink()
    with pytest.raises(UserError, match=r"id file .*val_id.txt not found"):
        build_dataset(cfg_for("sysumm", root), verbose=False)
    (root / "exp" / "test_id.txt").write_text("")
    with pytest.raises(UserError, match=r"test_id.txt lists no ids"):
        build_dataset(cfg_for("sysumm", root), verbose=False, need_train=False)
    (root / "exp" / "test_id.txt").write_text("999\n")  # an id with no images
    with pytest.raises(UserError, match=r"no images of the test ids"):
        build_dataset(cfg_for("sysumm", root), verbose=False, need_train=False)


def test_sysu_broken_image(sysu_root: Path, tmp_path: Path) -> None:
    root = copy_tree(sysu_root, tmp_path)
    bad = Path(build_dataset(cfg_for("sysumm", root), verbose=False).test_sets["infrared"][0].path)
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(UserError, match=rf"image {bad} does not decode"):
        build_dataset(cfg_for("sysumm", root), verbose=False, need_train=False)


# ---------------------------------------------------------------- LLCM

def test_llcm_reads(llcm_root: Path) -> None:
    ds = build_dataset(cfg_for("llcm", llcm_root), verbose=False)
    assert isinstance(ds, LLCM) and ds.name == "llcm" and ds.num_classes == 8
    labels = {}
    for r in ds.train:
        pid_dir = Path(r.path).parent.name
        assert labels.setdefault(pid_dir, r.pid) == r.pid  # one label per person, both files
        assert Path(r.path).parent.parent.name == f"cam{r.cam}"
        assert ("train_nir" in r.path) == (r.modality == INFRARED)
    assert sorted(labels.values()) == list(range(8))
    test_ids = {int(t) for t in (llcm_root / "idx" / "test_id.txt").read_text().split(",")}
    vis, nir = ds.test_sets["visible"], ds.test_sets["infrared"]
    assert {r.pid for r in vis} == {r.pid for r in nir} == test_ids
    assert {r.modality for r in ds.test_sets["infrared"]} == {INFRARED}
    keys = [(r.cam, r.pid, os.path.basename(r.path)) for r in ds.test_sets["visible"]]
    assert keys == sorted(keys)


def test_llcm_errors(llcm_root: Path, tmp_path: Path) -> None:
    root = copy_tree(llcm_root, tmp_path)
    f = root / "idx" / "train_nir.txt"
    lines = read_lines(f)
    lines[1] = "somewhere/img.jpg 3"
    (root / "somewhere").mkdir()
    shutil.copy(root / lines[0].split()[0], root / "somewhere" / "img.jpg")
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(UserError, match=r"train_nir.txt line 2: expected a cam<c> folder"):
        build_dataset(cfg_for("llcm", root), verbose=False)
    shutil.rmtree(root / "test_nir")
    with pytest.raises(UserError, match=r"LLCM: test folder .*test_nir not found"):
        build_dataset(cfg_for("llcm", root), verbose=False, need_train=False)


def test_no_identity_with_both_modalities(regdb_root: Path, tmp_path: Path) -> None:
    root = copy_tree(regdb_root, tmp_path)
    thermal = read_lines(root / "idx" / "train_thermal_1.txt")
    (root / "idx" / "train_thermal_1.txt").write_text(thermal[0].split()[0] + " 99\n")
    with pytest.raises(UserError, match="RegDB trial 1 training set: no identity has images "
                                        "in both modalities"):
        build_dataset(cfg_for("regdb", root), verbose=False)


@pytest.mark.parametrize("trial", [11, 12])
def test_regdb_trial_outside_its_ten_splits_is_one_line(regdb_root, trial):
    from utils.errors import UserError

    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", "DATA.ROOT", str(regdb_root),
                             "DATA.TRIAL", str(trial)])
    with pytest.raises(UserError, match=rf"^DATA.TRIAL = {trial}: RegDB has splits 1..10$"):
        build_dataset(cfg, verbose=False)
