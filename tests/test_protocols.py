"""Protocols on generated datasets: gallery sampling (seeded and official), the SYSU
camera rule, both RegDB and LLCM directions, feature extraction and distances."""
from __future__ import annotations

import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from torch import nn

import data
from data.base import ImageRecord
from data.llcm import LLCM
from data.protocols import sample_gallery_seeded
from data.regdb import RegDB
from data.sysu import SYSUMM01, SysuPermutations, sample_gallery_official
from data.sysu import resolve_gallery as resolve_sysu_gallery
from engine.evaluate import evaluate_features
from engine.inference import extract_features
from utils.config import load_config
from utils.distances import feature_distance
from utils.errors import UserError
from utils.metrics import evaluate_ranking


def read(name: str, root: Path, *overrides: str):
    cfg = load_config(None, ["DATA.DATASET_NAME", name, "DATA.ROOT", str(root),
                             "DATA.VERIFY_IMAGES", "no", *overrides])
    return cfg, data.build_dataset(cfg, verbose=False, need_train=False)


@pytest.fixture(scope="module")
def sysu(sysu_root):
    return read("sysumm", sysu_root)


def pid_cam(records, idx):
    return [(records[i].pid, records[i].cam) for i in idx]


def test_single_shot_gallery_one_image_per_id_per_rgb_camera(sysu):
    cfg, ds = sysu
    pool = ds.test_sets["visible"]
    present = {(r.pid, r.cam) for r in pool}
    for mode, cams in (("all", (1, 2, 4, 5)), ("indoor", (1, 2))):
        settings, info = ds.settings(cfg, ds.eval_sets(), modes=[mode], shots=[1])
        assert info["gallery_sampling"] == "random" and len(settings) == 1
        galleries = []
        for trial in (1, 2, 3):
            idx = settings[0].sample(trial)
            counts = Counter(pid_cam(pool, idx))
            assert set(counts) == {pc for pc in present if pc[1] in cams}
            assert set(counts.values()) == {1}
            galleries.append(tuple(idx))
        assert len(set(galleries)) > 1  # trials draw different galleries
        assert tuple(settings[0].sample(2)) == galleries[1]  # and are reproducible


def test_multi_shot_takes_up_to_ten_distinct_images():
    # 15 images in (7, cam1), 3 in (7, cam4), 12 in (9, cam2).
    records = [ImageRecord(f"/d/cam{c}/{p:04d}/{k:04d}.jpg", p, c, 0)
               for p, c, n in ((7, 1, 15), (7, 4, 3), (9, 2, 12)) for k in range(1, n + 1)]
    idx = sample_gallery_seeded(records, (1, 2, 4, 5), seed=0, shots=10)
    assert Counter(pid_cam(records, idx)) == {(7, 1): 10, (7, 4): 3, (9, 2): 10}
    assert len(set(idx.tolist())) == len(idx)
    # Indoor: only cams 1 and 2.
    idx = sample_gallery_seeded(records, (1, 2), seed=0, shots=10)
    assert {records[i].cam for i in idx} == {1, 2}


def test_seeded_sampling_reproduces_the_agw_draws(sysu, sysu_root):
    """random.seed(trial) then random.choice over the sorted folder listing, id by id."""
    cfg, ds = sysu
    test_ids = [int(x) for x in (sysu_root / "exp" / "test_id.txt").read_text().split(",")]
    for trial in (0, 4):
        random.seed(trial)
        expected = []
        for pid in sorted(test_ids):
            for cam in (1, 2, 4, 5):
                folder = sysu_root / f"cam{cam}" / f"{pid:04d}"
                if folder.is_dir():
                    files = sorted(str(folder / f) for f in os.listdir(folder))
                    expected.append(random.choice(files))
        got = sample_gallery_seeded(ds.test_sets["visible"], (1, 2, 4, 5), seed=trial)
        assert [ds.test_sets["visible"][i].path for i in got] == expected


def test_official_permutations_pick_exactly_the_listed_indices(sysu_mirror_root, sysu_rand_perm):
    cfg, ds = read("sysumm", sysu_mirror_root, "TEST.GALLERY", "official",
                   "TEST.PERM_PATH", str(sysu_rand_perm))
    table = scipy.io.loadmat(str(sysu_rand_perm))["rand_perm_cam"]
    settings, info = ds.settings(cfg, ds.eval_sets())
    assert info["gallery_sampling"] == "official" and info["perm_path"] == str(sysu_rand_perm)
    by_name = {s.name: s for s in settings}
    pool = ds.test_sets["visible"]
    for name, cams, shots in (("all-search single-shot", (1, 2, 4, 5), 1),
                              ("all-search multi-shot", (1, 2, 4, 5), 10),
                              ("indoor-search multi-shot", (1, 2), 10)):
        for trial in (1, 7, 10):
            expected = []
            for pid in sorted({r.pid for r in pool}):
                for cam in cams:
                    folder = sysu_mirror_root / f"cam{cam}" / f"{pid:04d}"
                    if not folder.is_dir():
                        continue
                    files = sorted(os.listdir(folder))
                    row = table[cam - 1, 0][pid - 1, 0][trial - 1]
                    expected += [str(folder / files[j - 1]) for j in row[:shots]]
            got = [pool[i].path for i in by_name[name].sample(trial)]
            assert got == expected
    with pytest.raises(UserError, match="holds 10 trials"):
        ds.settings(cfg, ds.eval_sets(), trials=[11])


def test_official_file_checks(sysu, sysu_rand_perm, tmp_path):
    cfg, ds = sysu
    # The perm file does not describe this dataset's image counts: refused, not misused.
    perm = SysuPermutations(sysu_rand_perm)
    assert perm.num_trials == 10
    with pytest.raises(UserError, match="lists .* images for id"):
        sample_gallery_official(ds.test_sets["visible"], (1, 2, 4, 5), 1, 1, perm)
    # auto: official only when the file exists; official without the file is an error.
    assert resolve_sysu_gallery("auto", "", str(tmp_path))[0] == "random"
    assert resolve_sysu_gallery("random", str(sysu_rand_perm), str(tmp_path))[0] == "random"
    assert resolve_sysu_gallery("auto", str(sysu_rand_perm), str(tmp_path))[0] == "official"
    with pytest.raises(UserError, match="rand_perm_cam.mat not found"):
        resolve_sysu_gallery("official", "", str(tmp_path))
    with pytest.raises(UserError, match="not found"):
        resolve_sysu_gallery("auto", str(tmp_path / "missing.mat"), str(tmp_path))
    (tmp_path / "bad.mat").write_text("not a mat file")
    with pytest.raises(UserError, match="not the official"):
        SysuPermutations(tmp_path / "bad.mat")


def test_camera_rule_applies_to_cam3_queries_only(sysu):
    """Cam-2 images of the query's id are made the nearest; only cam-3 queries lose them."""
    _, ds = sysu
    q, g = ds.test_sets["infrared"], ds.test_sets["visible"]
    q_pids, q_cams = np.array([r.pid for r in q]), np.array([r.cam for r in q])
    g_pids, g_cams = np.array([r.pid for r in g]), np.array([r.cam for r in g])
    same = q_pids[:, None] == g_pids[None]
    dist = np.where(same & (g_cams[None] == 2), 0.0, np.where(same, 2.0, 1.0))
    with_cam2 = {r.pid for r in g if r.cam == 2}
    for cam in (3, 6):
        sel = (q_cams == cam) & np.isin(q_pids, list(with_cam2))
        has_other = np.array([((g_pids == p) & (g_cams != 2)).any() for p in q_pids])
        if cam == 3:
            sel &= has_other  # otherwise the query has no match left and is skipped
        assert sel.any()
        cmc, _, _ = evaluate_ranking(dist[sel], q_pids[sel], g_pids, q_cams[sel], g_cams,
                                     rule=SYSUMM01.rule)
        assert cmc[0] == (1.0 if cam == 6 else 0.0)


def feature_sets(sets, dim=16, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(len(v), dim, generator=gen) for k, v in sets.items()}


def labels(records):
    return np.array([r.pid for r in records]), np.array([r.cam for r in records])


def test_regdb_both_directions(regdb_root):
    cfg, ds = read("regdb", regdb_root, "DATA.TRIAL", "4")
    sets = ds.eval_sets()
    settings, info = ds.settings(cfg, sets)
    assert [s.name for s in settings] == ["visible-to-thermal", "thermal-to-visible"]
    assert info == {"regdb_trial": 4}
    feats = feature_sets(sets)
    out = evaluate_features(cfg, settings, feats, sets)
    v2t, t2v = out["visible-to-thermal"], out["thermal-to-visible"]
    n_vis, n_ir = len(ds.test_sets["visible"]), len(ds.test_sets["infrared"])
    assert v2t["query"] == n_vis and v2t["gallery"] == n_ir
    assert t2v["query"] == n_ir and t2v["gallery"] == n_vis
    assert [t["trial"] for t in v2t["trials"]] == [4]
    dist = feature_distance(feats["visible"], feats["infrared"]).numpy()
    vp, tp = labels(ds.test_sets["visible"])[0], labels(ds.test_sets["infrared"])[0]
    for entry, (d, qp, gp) in ((v2t, (dist, vp, tp)), (t2v, (dist.T, tp, vp))):
        cmc, m_ap, m_inp = evaluate_ranking(d, qp, gp, rule=RegDB.rule)
        assert entry["mean"]["R1"] == pytest.approx(100 * cmc[0], abs=1e-3)
        assert entry["mean"]["mAP"] == pytest.approx(100 * m_ap, abs=1e-3)
        assert entry["mean"]["mINP"] == pytest.approx(100 * m_inp, abs=1e-3)


def test_llcm_both_directions_with_seeded_galleries(llcm_root):
    cfg, ds = read("llcm", llcm_root, "TEST.NUM_TRIALS", "3")
    sets = ds.eval_sets()
    settings, info = ds.settings(cfg, sets)
    assert [s.name for s in settings] == ["infrared-to-visible", "visible-to-infrared"]
    assert info["gallery_sampling"] == "random"
    feats = feature_sets(sets)
    out = evaluate_features(cfg, settings, feats, sets)
    for s in settings:
        gallery = sets[s.gallery]
        present = {(r.pid, r.cam) for r in gallery}
        for trial in s.trials:
            idx = s.sample(trial)
            assert sorted(pid_cam(gallery, idx)) == sorted(present)  # one per id per camera
        entry = out[s.name]
        assert [t["trial"] for t in entry["trials"]] == [1, 2, 3]
        assert entry["query"] == len(sets[s.query])
        idx = s.sample(2)
        qp, qc = labels(sets[s.query])
        gp, gc = labels(gallery)
        dist = feature_distance(feats[s.query], feats[s.gallery][torch.from_numpy(idx)])
        cmc, m_ap, _ = evaluate_ranking(dist, qp, gp[idx], qc, gc[idx], rule=LLCM.rule)
        assert entry["trials"][1]["mAP"] == pytest.approx(100 * m_ap, abs=1e-3)
        r1 = [t["R1"] for t in entry["trials"]]
        assert entry["mean"]["R1"] == pytest.approx(np.mean(r1), abs=1e-3)
        assert entry["std"]["R1"] == pytest.approx(np.std(r1, ddof=1), abs=1e-3)


def test_val_split_only_when_identities_are_held_out(regdb_root):
    _, ds = read("regdb", regdb_root)
    with pytest.raises(UserError, match="has no validation split: set DATA.VAL_IDS"):
        ds.eval_sets("val")


class ColumnModel(nn.Module):
    """(B, 3, H, W) -> (B, W): a column profile, so a mirror changes the feature."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))

    def forward(self, img, modality):
        assert not self.training
        return img.mean(dim=(1, 2)) * self.scale + modality[:, None]


def test_extract_features_places_rows_by_index_and_flip_adds():
    imgs = torch.randn(7, 3, 4, 5)
    order = [4, 0, 6, 2, 1, 5, 3]
    batches = [{"img": imgs[order[i:i + 3]], "modality": torch.ones(len(order[i:i + 3])).long(),
                "index": torch.tensor(order[i:i + 3])} for i in range(0, 7, 3)]
    model = ColumnModel().train()
    plain = extract_features(model, batches, 7, torch.device("cpu"))
    assert model.training  # restored
    torch.testing.assert_close(plain, imgs.mean(dim=(1, 2)) + 1)
    flipped = extract_features(model, batches, 7, torch.device("cpu"), flip=True)
    torch.testing.assert_close(flipped, imgs.mean(dim=(1, 2)) + imgs.flip(3).mean(dim=(1, 2))
                               + 2)
    with pytest.raises(RuntimeError, match="no feature for 1 of 8"):
        extract_features(model, batches, 8, torch.device("cpu"))
    with torch.no_grad():
        model.scale.fill_(float("inf"))  # an overflowing network: one plain line, no ranking
    with pytest.raises(UserError, match="non-finite features .* for 7 of 7 test images"):
        extract_features(model, batches, 7, torch.device("cpu"))


def test_pairwise_distances():
    x, y = torch.randn(5, 8, dtype=torch.float64), torch.randn(6, 8, dtype=torch.float64)
    x, y = x.float(), y.float()  # test features are float32
    torch.testing.assert_close(feature_distance(x, y, "sqeuclidean", normalize=False),
                               torch.cdist(x, y) ** 2, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(feature_distance(x, y, "euclidean", normalize=False),
                               torch.cdist(x, y), atol=1e-4, rtol=1e-4)
    xn, yn = torch.nn.functional.normalize(x, dim=1), torch.nn.functional.normalize(y, dim=1)
    torch.testing.assert_close(feature_distance(x, y, "sqeuclidean"),
                               torch.cdist(xn, yn) ** 2, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(feature_distance(x, y, "cosine", normalize=False),
                               1 - xn @ yn.T, atol=1e-6, rtol=1e-6)
