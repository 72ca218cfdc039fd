"""Modality-gap pictures: valid PNGs written atomically, correct distance statistics."""
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import utils.gap_pictures as gap_pictures
import utils.io
from utils.errors import UserError
from utils.gap_pictures import (
    choose_identities,
    distance_histograms,
    embedding_map,
    project_2d,
)


def _clusters(num_ids, per_modality, dim=16, spread=0.05, seed=0):
    """Features around one random centre per identity, ``per_modality`` rows in each modality."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(num_ids, dim))
    pids = np.repeat(np.arange(num_ids), 2 * per_modality)
    modalities = np.tile(np.repeat([0, 1], per_modality), num_ids)
    feats = centres[pids] + spread * rng.normal(size=(pids.size, dim))
    return feats, pids, modalities


def _assert_png(path, size):
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size == size
        # a drawn figure, not a blank canvas
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20)) > 20
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left


def _direct_distances(q, g, q_pids, g_pids):
    d = np.linalg.norm(q[:, None, :] - g[None, :, :], axis=2)
    same = q_pids[:, None] == g_pids[None, :]
    return d[same], d[~same]


def test_embedding_map_tsne_png(tmp_path):
    feats, pids, modalities = _clusters(10, 2)  # 40 points
    out = tmp_path / "map" / "embedding.png"
    assert embedding_map(feats, pids, modalities, out, seed=0) == "tsne"
    _assert_png(out, (600, 600))


def test_tsne_adapts_to_twelve_points():
    feats, _, _ = _clusters(3, 2)
    coords, used = project_2d(feats, method="tsne")
    assert used == "tsne" and coords.shape == (12, 2) and np.isfinite(coords).all()


def test_too_few_points_for_tsne():
    feats = np.eye(3, 5)
    assert project_2d(feats, method="auto")[1] == "pca"
    with pytest.raises(UserError, match="at least 4 points"):
        project_2d(feats, method="tsne")


def test_embedding_map_pca_from_torch_tensors(tmp_path):
    feats, pids, modalities = _clusters(6, 3)
    out = tmp_path / "pca.png"
    used = embedding_map(torch.from_numpy(feats).float(), torch.from_numpy(pids),
                         torch.from_numpy(modalities), out, method="pca", title="PCA map")
    assert used == "pca"
    _assert_png(out, (600, 600))


def test_missing_sklearn_falls_back_to_pca(tmp_path, monkeypatch):
    # A None entry makes the import fail even when the package was imported before.
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.manifold", None)
    feats, pids, modalities = _clusters(5, 4)
    out = tmp_path / "fallback.png"
    assert embedding_map(feats, pids, modalities, out, method="auto") == "pca"
    _assert_png(out, (600, 600))
    with pytest.raises(UserError, match="needs scikit-learn"):
        project_2d(feats, method="tsne")


def test_pca_projects_l2_normalised_features():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(9, 6))
    scaled = feats * rng.uniform(0.1, 10.0, size=(9, 1))
    coords, used = project_2d(scaled, method="pca")
    assert used == "pca"
    np.testing.assert_allclose(coords, project_2d(feats, method="pca")[0], atol=1e-9)
    # unit rows on a great circle: PCA keeps the plane, so pairwise distances survive
    angles = np.linspace(0.0, 1.5, 7)
    circle = np.stack([np.cos(angles), np.sin(angles), np.zeros(7)], axis=1) * 3.0
    coords = project_2d(circle, method="pca")[0]
    unit = circle / 3.0
    np.testing.assert_allclose(np.linalg.norm(coords[:, None] - coords[None], axis=2),
                               np.linalg.norm(unit[:, None] - unit[None], axis=2), atol=1e-9)


def test_choose_identities_prefers_both_modalities():
    pids = np.concatenate([np.repeat(np.arange(30), 2), np.arange(10)])
    modalities = np.concatenate([np.zeros(60, dtype=int), np.ones(10, dtype=int)])
    # ids 0..9 appear in both modalities, 10..29 only in the visible one
    chosen = choose_identities(pids, modalities, max_ids=5, seed=3)
    assert chosen.size == 5 and set(chosen) <= set(range(10))
    np.testing.assert_array_equal(chosen, choose_identities(pids, modalities, 5, seed=3))
    draws = {tuple(choose_identities(pids, modalities, 5, seed=s)) for s in range(5)}
    assert len(draws) > 1
    chosen = choose_identities(pids, modalities, max_ids=15, seed=0)
    assert set(range(10)) < set(chosen) and chosen.size == 15
    assert choose_identities(pids, modalities, max_ids=100).size == 30
    with pytest.raises(UserError, match="max_ids"):
        choose_identities(pids, modalities, max_ids=0)


def test_embedding_map_draws_only_max_ids(tmp_path, monkeypatch):
    feats, pids, modalities = _clusters(12, 3)
    projected = []

    def spy(rows, method="auto", seed=0):
        projected.append(np.asarray(rows))
        return project_2d(rows, method=method, seed=seed)

    monkeypatch.setattr(gap_pictures, "project_2d", spy)
    embedding_map(feats, pids, modalities, tmp_path / "few.png", max_ids=4, method="pca")
    chosen = choose_identities(pids, modalities, max_ids=4)
    assert chosen.size == 4
    np.testing.assert_array_equal(projected[0], feats[np.isin(pids, chosen)])
    assert projected[0].shape == (4 * 6, 16)


def test_embedding_map_rejects_bad_input(tmp_path):
    feats, pids, modalities = _clusters(3, 2)
    with pytest.raises(UserError, match="pids: expected 12 entries"):
        embedding_map(feats, pids[:-1], modalities, tmp_path / "x.png")
    with pytest.raises(UserError, match=r"modalities: expected 0 \(visible\) or 1"):
        embedding_map(feats, pids, modalities + 1, tmp_path / "x.png")
    with pytest.raises(UserError, match="method: expected one of"):
        embedding_map(feats, pids, modalities, tmp_path / "x.png", method="umap")
    assert not list(tmp_path.iterdir())


def test_distance_means_match_direct_computation(tmp_path):
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    q_pids, g_pids = np.array([1, 2, 7]), np.array([1, 1, 2, 3, 4])
    out = tmp_path / "hist.png"
    for normalize in (False, True):
        stats = distance_histograms(q, g, q_pids, g_pids, out, normalize=normalize,
                                    metric="euclidean")
        qn, gn = q, g
        if normalize:
            qn = q / np.linalg.norm(q, axis=1, keepdims=True)
            gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        same, diff = _direct_distances(qn, gn, q_pids, g_pids)
        assert stats["same_pairs"] == 3 and stats["diff_pairs"] == 12
        # float32 distances (utils.distances), as the ranking computes them
        assert stats["same_mean"] == pytest.approx(same.mean(), abs=1e-6)
        assert stats["diff_mean"] == pytest.approx(diff.mean(), abs=1e-6)
        assert stats["gap"] == pytest.approx(diff.mean() - same.mean(), abs=1e-6)
    _assert_png(out, (650, 450))


def test_distances_follow_the_ranking_metric(tmp_path):
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(3, 4)), rng.normal(size=(5, 4))
    q_pids, g_pids = np.array([1, 2, 7]), np.array([1, 1, 2, 3, 4])
    same_mask = q_pids[:, None] == g_pids[None, :]
    ip = q @ g.T
    cos = ip / np.linalg.norm(q, axis=1)[:, None] / np.linalg.norm(g, axis=1)[None, :]
    for metric, direct in (("dot", -ip), ("cosine", 1 - cos)):
        stats = distance_histograms(q, g, q_pids, g_pids, tmp_path / "h.png", normalize=False,
                                    metric=metric)
        assert stats["distance"] == metric
        assert stats["same_mean"] == pytest.approx(direct[same_mask].mean(), abs=1e-6)
        assert stats["diff_mean"] == pytest.approx(direct[~same_mask].mean(), abs=1e-6)
    squared = distance_histograms(q, g, q_pids, g_pids, tmp_path / "h.png", normalize=False,
                                  metric="sqeuclidean")
    plain = distance_histograms(q, g, q_pids, g_pids, tmp_path / "h.png", normalize=False,
                                metric="euclidean")
    assert squared["same_mean"] > plain["same_mean"]  # squared values, not plain ones
    with pytest.raises(UserError, match="metric: expected one of sqeuclidean, euclidean, cosine"):
        distance_histograms(q, g, q_pids, g_pids, tmp_path / "x.png", metric="manhattan")
    assert not (tmp_path / "x.png").exists()


def test_separated_clusters_have_a_positive_gap(tmp_path):
    feats, pids, modalities = _clusters(8, 4, spread=0.02)
    ir, vis = modalities == 1, modalities == 0
    stats = distance_histograms(torch.from_numpy(feats[ir]), torch.from_numpy(feats[vis]),
                                torch.from_numpy(pids[ir]), torch.from_numpy(pids[vis]),
                                tmp_path / "gap.png")
    assert stats["same_pairs"] == 8 * 4 * 4 and stats["diff_pairs"] == 8 * 4 * 28
    assert stats["same_mean"] < 0.05 < 0.5 < stats["diff_mean"]
    assert stats["gap"] == pytest.approx(stats["diff_mean"] - stats["same_mean"])


def test_sampling_is_uniform_distinct_and_chunk_independent(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    q, g = rng.normal(size=(6, 3)), rng.normal(size=(7, 3))
    q_pids, g_pids = np.arange(6) % 3, np.arange(7) % 3
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    _, diff = _direct_distances(qn, gn, q_pids, g_pids)
    out = tmp_path / "h.png"

    def run(**kwargs):
        return distance_histograms(q, g, q_pids, g_pids, out, metric="euclidean", **kwargs)

    # one chunk versus one query row per chunk: the same pairs are drawn
    whole = [run(max_pairs=m, seed=5) for m in (2, 27, 10_000)]
    monkeypatch.setattr(gap_pictures, "_CHUNK_ELEMENTS", 1)
    assert [run(max_pairs=m, seed=5) for m in (2, 27, 10_000)] == whole
    assert whole[2]["diff_mean"] == pytest.approx(diff.mean())
    assert diff.size == 28 and whole[0]["diff_pairs"] == 2 and whole[1]["diff_pairs"] == 27
    # 2 of 28 (redrawing duplicates): the mean of two different real pairs
    sums = {round(a + b, 9) for i, a in enumerate(diff) for b in diff[i + 1:]}
    assert round(2 * whole[0]["diff_mean"], 9) in sums
    # 27 of 28 (one permutation): all but one real pair
    left_out = {round(diff.sum() - d, 9) for d in diff}
    assert round(27 * whole[1]["diff_mean"], 9) in left_out
    # every different-identity pair can be the one drawn (4 pairs here)
    few_q, few_g = q[:2], g[:3]
    _, few_diff = _direct_distances(qn[:2], gn[:3], q_pids[:2], g_pids[:3])
    drawn = {round(distance_histograms(few_q, few_g, q_pids[:2], g_pids[:3], out, max_pairs=1,
                                       bins=5, seed=s, metric="euclidean")["diff_mean"], 9)
             for s in range(20)}
    assert few_diff.size == 4 and drawn == {round(d, 9) for d in few_diff}


def test_distance_histograms_reject_bad_input(tmp_path):
    q, g = np.ones((2, 3)), np.ones((3, 3))
    with pytest.raises(UserError, match="no same-identity pairs"):
        distance_histograms(q, g, [0, 1], [2, 3, 4], tmp_path / "h.png")
    with pytest.raises(UserError, match="no different-identity pairs"):
        distance_histograms(q, g, [0, 0], [0, 0, 0], tmp_path / "h.png")
    with pytest.raises(UserError, match="g_feat: expected 3 feature dimensions"):
        distance_histograms(q, np.ones((3, 4)), [0, 1], [0, 1, 2], tmp_path / "h.png")
    with pytest.raises(UserError, match="q_pids: expected 2 entries"):
        distance_histograms(q, g, [0], [0, 1, 2], tmp_path / "h.png")
    assert not list(tmp_path.iterdir())


def test_pictures_replace_files_atomically(tmp_path, monkeypatch):
    feats, pids, modalities = _clusters(4, 2)
    hist, emb = tmp_path / "hist.png", tmp_path / "emb.png"
    hist.write_bytes(b"old")
    emb.write_bytes(b"old")
    distance_histograms(feats[modalities == 1], feats[modalities == 0], pids[modalities == 1],
                        pids[modalities == 0], hist)
    embedding_map(feats, pids, modalities, emb, method="pca")
    for path in (hist, emb):
        with Image.open(path) as img:
            assert img.format == "PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.png", "hist.png"]
    before = {p: p.read_bytes() for p in (hist, emb)}

    def no_rename(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(utils.io.os, "replace", no_rename)
    with pytest.raises(UserError, match=r"cannot write \(disk full\)"):
        embedding_map(feats, pids, modalities, emb, method="pca", title="new")
    with pytest.raises(UserError, match=r"cannot write \(disk full\)"):
        distance_histograms(feats, feats, pids, pids, hist, bins=10)
    assert {p: p.read_bytes() for p in (hist, emb)} == before  # old pictures intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.png", "hist.png"]
