"""test.py end to end on tiny random-weight checkpoints, and every bad input."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.protocols import sample_gallery_seeded
from data.regdb import RegDB
from data.sysu import SYSUMM01
from tests.helpers import REPO, load_test_script, run_script, save_random_checkpoint
from utils.distances import feature_distance
from utils.metrics import evaluate_ranking

SCRIPT = load_test_script("vireid_test_script")
save_checkpoint = save_random_checkpoint


def run(monkeypatch, capsys, *argv: str) -> tuple[int, str, str]:
    return run_script(SCRIPT, monkeypatch, capsys, *argv)


@pytest.fixture(scope="module")
def sysu_ckpt(sysu_root, tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "sysu.pth", "sysumm", sysu_root,
                           "TEST.NUM_TRIALS", "2")


def test_sysu_end_to_end_json_and_features(sysu_ckpt, tmp_path, monkeypatch, capsys):
    out_json, feats = tmp_path / "res" / "results.json", tmp_path / "feats.npz"
    code, out, err = run(monkeypatch, capsys, "--model_path", str(sysu_ckpt), "--output",
                         str(out_json), "--save_features", str(feats))
    assert code == 0, err
    res = json.loads(out_json.read_text())
    names = ["all-search single-shot", "all-search multi-shot", "indoor-search single-shot",
             "indoor-search multi-shot"]
    assert list(res["settings"]) == names
    assert res["checkpoint"] == str(sysu_ckpt) and "[MODEL]" in res["config"]
    assert res["protocol"]["gallery_sampling"] == "random"
    assert res["headline"]["setting"] == "all-search single-shot"
    assert "gallery random" in out
    for name in names:
        assert name in out
        entry = res["settings"][name]
        assert [t["trial"] for t in entry["trials"]] == [1, 2]
        for t in entry["trials"]:
            assert 0 <= t["mINP"] <= 100 and 0 <= t["mAP"] <= 100
            assert t["R1"] <= t["R5"] <= t["R10"] <= t["R20"] <= 100
        assert entry["mean"]["mAP"] == pytest.approx(np.mean([t["mAP"] for t in entry["trials"]]),
                                                     abs=1e-3)
    # The JSON figures follow from the saved features and the documented sampling.
    f = np.load(feats)
    pool_pid, pool_cam = f["visible_pid"], f["visible_cam"]
    assert f["infrared_feat"].shape == (len(f["infrared_pid"]), 512)
    assert set(f["infrared_cam"].tolist()) <= {3, 6} and set(pool_cam.tolist()) <= {1, 2, 4, 5}
    from data.base import ImageRecord
    pool = [ImageRecord(str(p), int(i), int(c), 0)
            for p, i, c in zip(f["visible_path"], pool_pid, pool_cam)]
    idx = sample_gallery_seeded(pool, (1, 2, 4, 5), seed=1, shots=1)  # trial 2
    dist = feature_distance(torch.from_numpy(f["infrared_feat"]),
                            torch.from_numpy(f["visible_feat"][idx]))
    cmc, m_ap, m_inp = evaluate_ranking(dist, f["infrared_pid"], pool_pid[idx],
                                        f["infrared_cam"], pool_cam[idx], SYSUMM01.rule)
    trial2 = res["settings"]["all-search single-shot"]["trials"][1]
    assert trial2["gallery"] == len(idx)
    assert trial2["R1"] == pytest.approx(100 * cmc[0], abs=1e-3)
    assert trial2["mAP"] == pytest.approx(100 * m_ap, abs=1e-3)
    assert trial2["mINP"] == pytest.approx(100 * m_inp, abs=1e-3)


def test_sysu_one_setting_one_trial_with_flip_and_rerank(sysu_ckpt, monkeypatch, capsys):
    code, out, err = run(monkeypatch, capsys, "--model_path", str(sysu_ckpt), "--mode", "indoor",
                         "--shots", "10", "--trial", "2", "TEST.FLIP", "yes", "TEST.RERANK",
                         "yes", "TEST.RERANK_K1", "4", "TEST.RERANK_K2", "2")
    assert code == 0, err
    assert "indoor-search multi-shot" in out and "all-search" not in out
    assert "flip yes" in out and "re-ranking k1=4 k2=2" in out


def test_regdb_all_trials_one_model_each(regdb_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(RegDB, "split_trials", 2)
    for t in (1, 2):
        (tmp_path / f"trial_{t}").mkdir()
        save_checkpoint(tmp_path / f"trial_{t}" / "best.pth", "regdb", regdb_root,
                        "DATA.TRIAL", str(t))
    template = str(tmp_path / "trial_{trial}" / "best.pth")
    code, out, err = run(monkeypatch, capsys, "--model_path", template, "--trial", "all",
                         "--output", str(tmp_path / "r.json"))
    assert code == 0, err
    assert "RegDB trials 1, 2, one model each" in out
    res = json.loads((tmp_path / "r.json").read_text())
    assert list(res["settings"]) == ["visible-to-thermal", "thermal-to-visible"]
    assert res["checkpoint"] == [template.replace("{trial}", str(t)) for t in (1, 2)]
    assert res["protocol"]["regdb_trial"] == [1, 2]
    for entry in res["settings"].values():
        r1 = [t["R1"] for t in entry["trials"]]
        assert [t["trial"] for t in entry["trials"]] == [1, 2]
        assert entry["mean"]["R1"] == pytest.approx(np.mean(r1), abs=1e-3)
        assert entry["std"]["R1"] == pytest.approx(np.std(r1, ddof=1), abs=1e-3)
    # One trial of the template, and a bad pairing of model and split.
    code, out, err = run(monkeypatch, capsys, "--model_path", template, "--trial", "2")
    assert code == 0 and "RegDB trial 2" in out
    code, out, err = run(monkeypatch, capsys, "--model_path", template.replace("{trial}", "1"),
                         "--trial", "2")
    assert code == 2 and "trained on RegDB trial 1" in err


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_bad_inputs_are_one_line_exit_2(sysu_ckpt, regdb_root, sysu_root, tmp_path,
                                        monkeypatch, capsys):
    def fails(*argv: str) -> str:
        code, _, err = run(monkeypatch, capsys, *argv)
        assert code == 2, err
        return one_error_line(err)

    assert "checkpoint not found" in fails("--model_path", str(tmp_path / "none.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "not a checkpoint torch can read" in fails("--model_path", str(tmp_path / "junk.pth"))
    # --config whose model differs from the checkpoint's.
    ini = tmp_path / "c.ini"
    ini.write_text(f"[DATA]\nDATASET_NAME = sysumm\nROOT = {sysu_root}\n[MODEL]\n"
                   "NAME = resnet34\nPRETRAIN_PATH =\n")
    msg = fails("--model_path", str(sysu_ckpt), "--config", str(ini))
    assert "MODEL.NAME" in msg and "resnet18" in msg
    assert "MODEL.SHARED_FROM" in fails("--model_path", str(sysu_ckpt), "MODEL.SHARED_FROM", "1")
    # Weights that do not fit the saved config: two-stream layout, number of classes.
    two_stream = save_checkpoint(tmp_path / "two.pth", "sysumm", sysu_root,
                                 model_overrides=("MODEL.SHARED_FROM", "1"))
    assert "does not fit" in fails("--model_path", str(two_stream))
    classes = save_checkpoint(tmp_path / "cls.pth", "sysumm", sysu_root)
    ckpt = torch.load(classes, weights_only=True)
    ckpt["num_classes"] = 7
    torch.save(ckpt, classes)
    msg = fails("--model_path", str(classes))
    assert "does not fit" in msg and "7 classes" in msg and "classifier.weight" in msg
    # Options.
    assert "rand_perm_cam.mat not found" in fails("--model_path", str(sysu_ckpt), "--gallery",
                                                   "official")
    assert "unknown key" in fails("--model_path", str(sysu_ckpt), "TEST.NOPE", "1")
    assert "--trial" in fails("--model_path", str(sysu_ckpt), "--trial", "zero")
    regdb = save_checkpoint(tmp_path / "regdb.pth", "regdb", regdb_root)
    assert "SYSU-MM01 only" in fails("--model_path", str(regdb), "--mode", "indoor")
    assert "put {trial}" in fails("--model_path", str(regdb), "--trial", "all")
    assert "give --trial" in fails("--model_path", str(tmp_path / "t_{trial}.pth"))
    (tmp_path / "sysu_1.pth").write_bytes(sysu_ckpt.read_bytes())
    assert "per-trial" in fails("--model_path", str(tmp_path / "sysu_{trial}.pth"), "--trial", "1")


def test_command_line_refusals_in_a_real_process(sysu_ckpt):
    for argv, expected in ((["--model_path", str(sysu_ckpt), "--shots", "3"], "invalid choice"),
                           (["--model_path", str(sysu_ckpt), "--bogus"], "unrecognized"),
                           (["--model_path", "/nonexistent/m.pth"], "checkpoint not found")):
        proc = subprocess.run([sys.executable, str(REPO / "test.py"), *argv], cwd=REPO,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        assert expected in proc.stderr.strip().splitlines()[-1]
        assert "Traceback" not in proc.stderr


def test_visualize_writes_cmc_and_ranked_sheets(sysu_ckpt, tmp_path, monkeypatch, capsys):
    from PIL import Image

    code, out, err = run(monkeypatch, capsys, "--model_path", str(sysu_ckpt), "--mode", "all",
                         "--trial", "1", "--visualize", str(tmp_path / "pics"),
                         "--output", str(tmp_path / "r.json"))
    assert code == 0, err
    gap = json.loads((tmp_path / "r.json").read_text())["modality_gap"]
    assert gap["embedding"] in ("tsne", "pca") and gap["distance"] == "sqeuclidean"
    assert gap["gap"] == pytest.approx(gap["diff_mean"] - gap["same_mean"], abs=1e-5)
    assert gap["same_pairs"] > 0 and gap["diff_pairs"] > 0
    cmc = Image.open(tmp_path / "pics" / "cmc.png")
    assert cmc.format == "PNG" and cmc.size == (600, 450)
    for name in ("all-search_single-shot", "all-search_multi-shot"):
        sheet = Image.open(tmp_path / "pics" / f"ranked_{name}.png")
        sheet.verify()
        sheet = Image.open(tmp_path / "pics" / f"ranked_{name}.png")
        # 8 query rows of 128 + 14 + 6 px; the query column and up to 10 gallery columns.
        assert sheet.size[1] == 6 + 8 * (128 + 6 + 14)
        assert sheet.size[0] <= 6 + 11 * (64 + 6) + 6
        assert f"ranked_{name}.png" in out
    # The modality-gap pictures of the headline setting, with their figures in the results.
    for name, size in (("embedding.png", (600, 600)), ("distances.png", (650, 450))):
        img = Image.open(tmp_path / "pics" / name)
        assert img.format == "PNG" and img.size == size
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20
        assert name in out


def test_part_weights_from_the_command_line_are_applied_and_recorded(regdb_root, tmp_path,
                                                                     monkeypatch, capsys):
    ckpt = save_checkpoint(tmp_path / "regdb.pth", "regdb", regdb_root, "TEST.FEAT", "pool+bn",
                           "TEST.NORM_EACH", "yes", "TEST.NORM", "no", "TEST.DISTANCE", "dot")
    results, feats = {}, {}
    for weights in ("1, 1", "0.1, 0.9"):
        out_json, npz = tmp_path / f"{weights}.json", tmp_path / f"{weights}.npz"
        code, out, err = run(monkeypatch, capsys, "--model_path", str(ckpt), "--output",
                             str(out_json), "--save_features", str(npz),
                             "TEST.PART_WEIGHTS", weights)
        assert code == 0, err
        results[weights] = json.loads(out_json.read_text())
        feats[weights] = np.load(npz)["visible_feat"]
    assert results["1, 1"]["protocol"]["part_weights"] == [1.0, 1.0]
    assert results["0.1, 0.9"]["protocol"]["part_weights"] == [0.1, 0.9]
    assert "pooled / BN parts weighted 0.1 / 0.9" in out
    # A network without expanded embeddings has no choice of them to report.
    assert results["1, 1"]["protocol"]["views"] is None and "embeddings" not in out
    # Each normalised part (pooled, BN; 512-d each) is scaled by the square root of its
    # weight, so the inner products are weighted 0.1 / 0.9.
    plain, weighted = feats["1, 1"], feats["0.1, 0.9"]
    assert plain.shape == weighted.shape == (32, 1024)
    np.testing.assert_allclose(weighted[:, :512], np.sqrt(0.1) * plain[:, :512], rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(weighted[:, 512:], np.sqrt(0.9) * plain[:, 512:], rtol=1e-5,
                               atol=1e-6)
