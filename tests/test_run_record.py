"""What a run records: precision (fp32 test features by default), the flip sum, the target
comparison, the environment and the dataset fingerprint."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
import engine.inference as inference
import engine.tester as tester
from data.fingerprint import OfficialCount
from data.sysu import SYSUMM01
from engine.inference import extract_features, extract_record_features
from engine.launch import train_main
from engine.record import checkpoint_precision
from engine.runtime import extraction_precision, training_precision
from engine.targets import target_record
from modeling import build_model
from tests.helpers import SMALL, tiny_training
from utils.config import config_to_ini, load_config
from utils.environment import environment, format_environment

TARGET = ["TARGET.SOURCE", "a paper, Tab. 1", "TARGET.SETTING", "visible-to-thermal",
          "TARGET.R1", "91.1", "TARGET.MAP", "85.1"]


# ------------------------------------------------------------------ precision
def test_test_features_are_fp32_by_default_whatever_the_training_uses(monkeypatch):
    cfg = load_config(None, ["TRAIN.AMP", "yes", "TRAIN.AMP_DTYPE", "bf16"])
    assert cfg.TEST.AMP is False
    seen = {}

    def spy(model, loader, num, device, **kwargs):
        seen.update(kwargs)
        return torch.zeros(num, 2)

    monkeypatch.setattr(inference, "extract_features", spy)
    monkeypatch.setattr(inference, "make_test_loader", lambda *a, **k: [])
    extract_record_features(cfg, torch.nn.Identity(), [], torch.device("cpu"))
    assert seen["amp"] is False and seen["amp_type"] == "bf16"
    # The record: nothing autocasts without CUDA or without TEST.AMP (no GPU is touched).
    cuda = torch.device("cuda")
    assert extraction_precision(cfg, cuda) == "fp32"
    assert extraction_precision(cfg, torch.device("cpu")) == "fp32"
    assert training_precision(cfg, torch.device("cpu")) == "fp32"
    amp_test = load_config(None, ["TEST.AMP", "yes"])
    assert extraction_precision(amp_test, torch.device("cpu")) == "fp32"


def test_checkpoint_precision_recorded_or_implied_by_its_config():
    saved = load_config(None, ["TRAIN.AMP", "yes", "TRAIN.AMP_DTYPE", "fp16"])
    assert checkpoint_precision({"precision": "bf16"}, saved) == "bf16"
    assert checkpoint_precision({}, saved).startswith("fp16 on CUDA")
    assert checkpoint_precision({}, load_config(None, ["TRAIN.AMP", "no"])) == "fp32"
    assert checkpoint_precision({}, load_config(None, ["MODEL.DEVICE", "cpu"])) == "fp32"


# ----------------------------------------------------------------------- flip
def test_deen_flip_feature_is_the_sum_of_normalised_parts_of_image_and_mirror(one_thread):
    torch.manual_seed(0)
    cfg = load_config(None, [*SMALL, "MODEL.SHARED_FROM", "1", "MODEL.DEE_BRANCHES", "2",
                             "MODEL.MFA", "1,1,1,0", "TEST.FEAT", "pool+bn",
                             "TEST.NORM_EACH", "yes", "TEST.FLIP", "yes"])
    model = build_model(cfg, 4).eval()
    img, mod = torch.randn(3, 3, 32, 16), torch.tensor([0, 1, 0])

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            pooled = model.pool(model.shared(model._specific(x, mod)))  # (3 views x 3, D)
            bn = model.neck(pooled)
        return torch.cat([F.normalize(f[v * 3:(v + 1) * 3], dim=1)
                          for v in range(3) for f in (pooled, bn)], dim=1)

    batches = [{"img": img, "modality": mod, "index": torch.arange(3)}]
    feats = extract_features(model, batches, 3, torch.device("cpu"), flip=cfg.TEST.FLIP)
    assert feats.shape == (3, 6 * model.feat_dim)
    torch.testing.assert_close(feats, by_hand(img) + by_hand(img.flip(3)))


# -------------------------------------------------------------------- targets
def test_target_record_only_for_the_trained_dataset_and_an_evaluated_setting():
    results = {"dataset": "regdb",
               "headline": {"setting": "visible-to-thermal", "R1": 50.25, "mAP": 40.5,
                            "mINP": 20.0}}
    cfg = load_config(None, TARGET)
    rec = target_record(cfg, results)
    assert rec["source"] == "a paper, Tab. 1" and set(rec["figures"]) == {"R1", "mAP"}
    for name, published in (("R1", 91.1), ("mAP", 85.1)):
        fig = rec["figures"][name]
        assert fig["target"] == published and fig["obtained"] == results["headline"][name]
        assert fig["difference"] == pytest.approx(results["headline"][name] - published)
    assert target_record(load_config(None, []), results) is None  # no SOURCE
    assert target_record(cfg, results, trained_on="sysumm") is None
    other = load_config(None, [*TARGET, "TARGET.SETTING", "thermal-to-visible"])
    assert target_record(other, results) is None
    # A target of another setting the protocol evaluated (RegDB's thermal-to-visible).
    both = {**results, "settings": {"thermal-to-visible": {"mean": {"R1": 60.0, "mAP": 50.0}}}}
    assert target_record(other, both)["figures"]["R1"]["obtained"] == 60.0


# ------------------------------------------------------------- environment
def test_environment_names_versions_and_the_commit():
    env = environment({"training": "fp32", "extraction": "fp32"}, True)
    assert env["torch"] == torch.__version__ and env["gpu_count"] == len(env["gpus"])
    assert env["deterministic"] is True and env["precision"]["extraction"] == "fp32"
    commit = env["git"]["commit"]
    assert commit is None or len(commit) == 40
    line = format_environment(env)
    assert line.startswith("environment: python ") and "deterministic yes" in line


# ------------------------------------------------------- train and test.py
@pytest.fixture(scope="module")
def trained(regdb_root: Path, tmp_path_factory: pytest.TempPathFactory, one_thread) -> Path:
    tmp = tmp_path_factory.mktemp("record")
    cfg = load_config(None, tiny_training("regdb", regdb_root, tmp / "out", *TARGET))
    ini = tmp / "tiny.ini"
    ini.write_text(config_to_ini(cfg))
    assert train_main("train.py", None, ["--config", str(ini)]) == 0
    return tmp / "out" / "trial_1"


def test_train_results_record_environment_fingerprint_and_target(trained: Path):
    res = json.loads((trained / "results.json").read_text())
    assert res["environment"]["precision"] == {"training": "fp32", "extraction": "fp32"}
    assert res["environment"]["deterministic"] is False
    head = res["headline"]
    assert res["target"]["figures"]["R1"]["obtained"] == head["R1"]
    assert res["target"]["figures"]["mAP"]["difference"] == pytest.approx(head["mAP"] - 85.1)
    fp = res["dataset_fingerprint"]
    assert fp["splits"]["test"]["visible"]["images"] == res["settings"]["visible-to-thermal"][
        "query"]
    log = (trained / "log.txt").read_text()
    assert "environment: python" in log and "counts differ from the official release" in log
    assert "target (a paper, Tab. 1), visible-to-thermal" in log
    assert torch.load(trained / "last.pth", weights_only=True)["precision"] == "fp32"


def test_test_script_records_the_trained_precision_and_the_target(trained: Path, tmp_path,
                                                                  capsys):
    out = tmp_path / "res.json"
    tester.run_test(tester.TestOptions(model_path=str(trained / "last.pth"), output=str(out)))
    res = json.loads(out.read_text())
    assert res["environment"]["precision"] == {"training": "fp32", "extraction": "fp32"}
    assert res["target"]["setting"] == "visible-to-thermal"
    assert "target (a paper, Tab. 1)" in capsys.readouterr().out
    # No target without a source.
    tester.run_test(tester.TestOptions(model_path=str(trained / "last.pth"), output=str(out),
                         overrides=["TARGET.SOURCE", ""]))
    assert "target" not in json.loads(out.read_text())


# --------------------------------------------------------------- fingerprint
def fingerprint(name: str, root: Path, *extra: str) -> dict:
    cfg = load_config(None, ["DATA.DATASET_NAME", name, "DATA.ROOT", str(root),
                             "DATA.VERIFY_IMAGES", "no", *extra])
    return data.build_dataset(cfg, verbose=False).fingerprint()


def test_fingerprint_counts_and_hash_of_the_synthetic_datasets(regdb_root, sysu_root,
                                                               llcm_root):
    fp = fingerprint("regdb", regdb_root)
    lines = (regdb_root / "idx" / "train_thermal_1.txt").read_text().split("\n")
    assert fp["splits"]["train"]["infrared"]["images"] == len([x for x in lines if x.strip()])
    files = sorted(p.relative_to(regdb_root).as_posix() for p in regdb_root.rglob("*.bmp"))
    assert fp["image_files"]["count"] == len(files)
    assert fp["image_files"]["sha256"] == hashlib.sha256(
        ("\n".join(files) + "\n").encode()).hexdigest()
    assert len(fp["split_files"]["files"]) == len(list((regdb_root / "idx").glob("*.txt")))
    # Not the release: one line, not one per count.
    assert len(fp["warnings"]) == 1 and "counts differ from the official release" in \
        fp["warnings"][0]

    fp = fingerprint("sysumm", sysu_root)
    test_ids = [int(i) for i in (sysu_root / "exp" / "test_id.txt").read_text().split(",")]
    ir = [p for c in (3, 6) for i in test_ids for p in (sysu_root / f"cam{c}" / f"{i:04d}").glob(
        "*.jpg")]
    assert fp["splits"]["test"]["infrared"]["images"] == len(ir)
    assert fp["splits"]["test"]["ids"] == len(test_ids)
    assert {c["field"] for c in fp["official"]} >= {"visible", "infrared", "ids"}

    fp = fingerprint("llcm", llcm_root)
    vis = list((llcm_root / "test_vis").rglob("*.jpg"))
    assert fp["splits"]["test"]["visible"]["images"] == len(vis)
    assert sum(fp["splits"]["test"]["visible"]["cameras"].values()) == len(vis)


def test_fingerprint_warns_of_a_missing_camera(llcm_root: Path, tmp_path: Path):
    before = fingerprint("llcm", llcm_root)
    cams = before["splits"]["test"]["infrared"]["cameras"]
    cam = next(c for c, n in cams.items() if n)
    copy = Path(shutil.copytree(llcm_root, tmp_path / "LLCM"))
    shutil.rmtree(copy / "test_nir" / f"cam{cam}")
    after = fingerprint("llcm", copy)
    line = f"LLCM test infrared has 0 images in cam{cam}: an incomplete copy?"
    assert line in after["warnings"] and line not in before["warnings"]
    assert after["image_files"]["sha256"] != before["image_files"]["sha256"]


def test_fingerprint_names_a_removed_image_against_the_release(sysu_root, tmp_path,
                                                               monkeypatch):
    # Declare the synthetic copy's own counts as the release's, then remove one image.
    full = fingerprint("sysumm", sysu_root)
    train = full["splits"]["train"]
    official = tuple(OfficialCount("train", f, train[f]["images"] if f in ("visible",
                                   "infrared") else train[f], "this test's copy")
                     for f in ("ids", "visible", "infrared"))
    monkeypatch.setattr(SYSUMM01, "official_counts", official)
    assert fingerprint("sysumm", sysu_root)["warnings"] == []
    copy = Path(shutil.copytree(sysu_root, tmp_path / "SYSU-MM01"))
    cfg = load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(copy)])
    victim = next(r for r in data.build_dataset(cfg, verbose=False).train if r.cam == 1)
    Path(victim.path).unlink()
    after = fingerprint("sysumm", copy)
    n = train["visible"]["images"]
    assert after["warnings"] == [f"SYSU-MM01 train: {n - 1:,} visible images, the release "
                                 f"has {n:,}"]
    assert after["image_files"]["count"] == full["image_files"]["count"] - 1
    assert after["image_files"]["sha256"] != full["image_files"]["sha256"]
    assert after["split_files"]["sha256"] == full["split_files"]["sha256"]
