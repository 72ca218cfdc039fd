"""Metrics against an independent per-query NumPy reference and hand-computed cases;
re-ranking against a direct NumPy transcription of the published algorithm."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data.llcm import LLCM
from data.regdb import RegDB
from data.sysu import SYSUMM01
from utils.distances import FeatureDistances, feature_distance
from utils.errors import UserError
from utils.metrics import RankingRule, evaluate_ranking
from utils.rerank import k_reciprocal_rerank

SYSU_LABEL = {1: 1, 2: 2, 3: 2, 4: 4, 5: 5, 6: 6}
# The protocols' ranking rules, by the names the reference below uses.
RULES = {"sysu": SYSUMM01.rule, "regdb": RegDB.rule, "llcm": LLCM.rule}


def eval_sysu(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20):
    return evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, SYSUMM01.rule, max_rank)


def eval_regdb(distmat, q_pids, g_pids, max_rank=20):
    return evaluate_ranking(distmat, q_pids, g_pids, rule=RegDB.rule, max_rank=max_rank)


def eval_llcm(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=20):
    return evaluate_ranking(distmat, q_pids, g_pids, q_cams, g_cams, LLCM.rule, max_rank)


def reference(distmat, q_pids, g_pids, q_cams, g_cams, rule, max_rank=20):
    """One query at a time, written from the protocol text."""
    cmcs, aps, inps = [], [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        pids, cams = g_pids[order], (g_cams[order] if g_cams is not None else None)
        if rule == "sysu":
            keep = np.array([SYSU_LABEL[c] != SYSU_LABEL[q_cams[i]] for c in cams], bool)
        elif rule == "llcm":
            keep = ~((pids == q_pids[i]) & (cams == q_cams[i]))
        else:
            keep = np.ones(len(pids), bool)
        pids = pids[keep]
        matches = pids == q_pids[i]
        if not matches.any():
            continue
        if rule == "regdb":
            first = int(np.flatnonzero(matches)[0])
        else:
            distinct = []
            for p in pids:
                if p not in distinct:
                    distinct.append(p)
            first = distinct.index(q_pids[i])
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
        ranks = np.flatnonzero(matches) + 1
        aps.append(np.mean([(n + 1) / r for n, r in enumerate(ranks)]))
        inps.append(len(ranks) / ranks[-1])
    return np.mean(cmcs, axis=0), float(np.mean(aps)), float(np.mean(inps))


def random_case(rng, num_q, num_g, num_ids, ties, rule):
    q_pids = rng.integers(0, num_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    if rule == "sysu":
        q_cams, g_cams = rng.choice([3, 6], num_q), rng.choice([1, 2, 4, 5], num_g)
    elif rule == "llcm":
        q_cams, g_cams = rng.integers(1, 10, num_q), rng.integers(1, 10, num_g)
    else:
        q_cams = g_cams = None
    dist = rng.random((num_q, num_g))
    if ties:
        dist = np.round(dist * 6)  # few distinct values: many ties
    return dist, q_pids, g_pids, q_cams, g_cams


def run(rule, dist, q_pids, g_pids, q_cams, g_cams, max_rank=20, **kw):
    return evaluate_ranking(dist, q_pids, g_pids, q_cams, g_cams, RULES[rule], max_rank, **kw)


@pytest.mark.parametrize("rule", ["sysu", "regdb", "llcm"])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_reference_on_random_matrices(rule, ties, dtype):
    rng = np.random.default_rng(7 + ties)
    for num_q, num_g, num_ids in ((60, 80, 12), (40, 15, 30), (25, 200, 5)):
        case = random_case(rng, num_q, num_g, num_ids, ties, rule)
        case = (case[0].astype(dtype),) + case[1:]
        cmc, m_ap, m_inp = run(rule, *case, chunk_elements=500)
        ref_cmc, ref_ap, ref_inp = reference(*case, rule)
        np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
        assert abs(m_ap - ref_ap) < 1e-6 and abs(m_inp - ref_inp) < 1e-6


def test_public_wrappers_and_inputs_agree():
    rng = np.random.default_rng(3)
    dist, qp, gp, qc, gc = random_case(rng, 30, 50, 8, True, "sysu")
    expected = reference(dist, qp, gp, qc, gc, "sysu")
    for d in (dist, torch.from_numpy(dist), torch.from_numpy(dist).float()):
        cmc, m_ap, m_inp = eval_sysu(d, qp, gp, torch.from_numpy(qc), gc)
        assert cmc.shape == (20,) and cmc.dtype == np.float64
        np.testing.assert_allclose(cmc, expected[0], atol=1e-6)
        assert abs(m_ap - expected[1]) < 1e-6 and isinstance(m_ap, float)
    # Chunks of one query and one big chunk agree.
    a = run("sysu", dist, qp, gp, qc, gc, chunk_elements=1)
    b = run("sysu", dist, qp, gp, qc, gc, chunk_elements=10**9)
    np.testing.assert_allclose(a[0], b[0])
    assert a[1:] == pytest.approx(b[1:], abs=1e-12)


def test_sysu_hand_computed_camera_rule_only_for_cam3_queries():
    # Gallery: cam2/id1, cam1/id2, cam1/id1, cam4/id1 at increasing distances.
    g_pids, g_cams = np.array([1, 2, 1, 1]), np.array([2, 1, 1, 4])
    dist = np.array([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]])
    # Cam-3 query: cam 2 removed -> id2, id1, id1 -> AP (1/2 + 2/3)/2, INP 2/3, CMC from rank 2.
    cmc, m_ap, m_inp = eval_sysu(dist[:1], [1], g_pids, [3], g_cams, max_rank=4)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert m_ap == pytest.approx((1 / 2 + 2 / 3) / 2) and m_inp == pytest.approx(2 / 3)
    # Cam-6 query keeps everything: id1, id2, id1, id1.
    cmc, m_ap, m_inp = eval_sysu(dist[1:], [1], g_pids, [6], g_cams, max_rank=4)
    np.testing.assert_allclose(cmc, [1, 1, 1, 1])
    assert m_ap == pytest.approx((1 + 2 / 3 + 3 / 4) / 3) and m_inp == pytest.approx(3 / 4)
    # A cam-3 query skips cam-2 images of other ids too.
    cmc, _, _ = eval_sysu([[0.1, 0.2]], [1], [2, 1], [3], [2, 1], max_rank=2)
    np.testing.assert_allclose(cmc, [1, 1])


def test_dedup_cmc_versus_plain_cmc():
    # Ranked: id2, id2, id2, id1 (different cameras): plain rank 4, de-duplicated rank 2.
    dist = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids, g_cams = np.array([2, 2, 2, 1]), np.array([1, 2, 4, 5])
    np.testing.assert_allclose(eval_regdb(dist, [1], g_pids, max_rank=5)[0], [0, 0, 0, 1, 1])
    np.testing.assert_allclose(eval_sysu(dist, [1], g_pids, [6], g_cams, 5)[0], [0, 1, 1, 1, 1])
    np.testing.assert_allclose(eval_llcm(dist, [1], g_pids, [3], g_cams, 5)[0], [0, 1, 1, 1, 1])
    assert eval_regdb(dist, [1], g_pids)[1] == pytest.approx(1 / 4)


def test_llcm_skips_same_id_same_camera_only():
    # id1/cam3 (skipped), id2/cam3 (kept), id1/cam5.
    cmc, m_ap, m_inp = eval_llcm([[0.1, 0.2, 0.3]], [1], [1, 2, 1], [3], [3, 3, 5], 3)
    np.testing.assert_allclose(cmc, [0, 1, 1])
    assert m_ap == pytest.approx(1 / 2) and m_inp == pytest.approx(1 / 2)


def test_ties_break_by_gallery_index():
    # Signed zeros and negative distances tie or order like their values.
    dist = np.array([[0.0, -0.0, 0.5, -1.0, 0.0]], dtype=np.float32)
    pids = np.array([7, 5, 7, 7, 5])
    # Ranking: col 3 (-1), cols 0, 1, 4 (zeros, by index), col 2 -> matches at ranks 3, 4.
    assert eval_regdb(dist, [5], pids, max_rank=5)[1] == pytest.approx((1 / 3 + 2 / 4) / 2)
    dist = np.zeros((1, 3))
    assert eval_regdb(dist, [5], [5, 7, 7], max_rank=3)[1] == pytest.approx(1.0)
    assert eval_regdb(dist, [5], [7, 7, 5], max_rank=3)[1] == pytest.approx(1 / 3)
    np.testing.assert_allclose(eval_regdb(dist, [5], [7, 7, 5], max_rank=3)[0], [0, 0, 1])


def test_queries_without_match_are_skipped_and_all_missing_is_an_error():
    dist = np.array([[0.1, 0.2], [0.5, 0.1]])
    one = eval_regdb(dist[:1], [1], [2, 1])
    both = eval_regdb(dist, [1, 9], [2, 1])
    np.testing.assert_allclose(one[0], both[0])
    assert one[1:] == both[1:]
    with pytest.raises(UserError, match="true match"):
        eval_regdb(dist, [8, 9], [2, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        eval_regdb(np.array([[np.nan, 0.1]]), [1], [2, 1])
    # Max rank beyond the gallery: the curve stays at its last value.
    assert eval_regdb(dist[:1], [1], [2, 1], max_rank=5)[0].tolist() == [0, 1, 1, 1, 1]


# ---------------------------------------------------------------- re-ranking

def rerank_reference(q_g, q_q, g_g, k1, k2, lam):
    """The published k-reciprocal algorithm, one item at a time."""
    num_q = q_g.shape[0]
    d = np.concatenate([np.concatenate([q_q, q_g], 1), np.concatenate([q_g.T, g_g], 1)], 0)
    d = d / d.max(axis=1, keepdims=True)
    n = d.shape[0]
    rank = np.argsort(d, axis=1, kind="stable")
    v = np.zeros((n, n))

    def recip(i, k):
        fwd = rank[i, :k + 1]
        return fwd[[i in rank[f, :k + 1] for f in fwd]]

    for i in range(n):
        r = recip(i, k1)
        expansion = list(r)
        for j in r:
            cand = recip(j, int(round(k1 / 2)))
            if len(np.intersect1d(cand, r)) > 2 / 3 * len(cand):
                expansion.extend(cand)
        expansion = np.unique(expansion)
        w = np.exp(-d[i, expansion])
        v[i, expansion] = w / w.sum()
    if k2 != 1:
        v = np.stack([v[rank[i, :k2]].mean(0) for i in range(n)])
    jac = np.zeros((num_q, n))
    for i in range(num_q):
        jac[i] = 1 - np.minimum(v[i], v).sum(1) / (2 - np.minimum(v[i], v).sum(1))
    final = jac * (1 - lam) + d[:num_q] * lam
    return final[:, num_q:]


@pytest.mark.parametrize("ties", [False, True])
def test_rerank_matches_reference(ties):
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(9, 8)), rng.normal(size=(23, 8))
    if ties:  # few distinct distances: neighbour lists are cut inside runs of ties
        q, g = np.round(q), np.round(g)

    def sq(a, b):
        return ((a[:, None] - b[None]) ** 2).sum(-1)

    for k1, k2, lam in ((6, 3, 0.3), (4, 1, 0.5)):
        expected = rerank_reference(sq(q, g), sq(q, q), sq(g, g), k1, k2, lam)
        got = k_reciprocal_rerank(torch.from_numpy(sq(q, g)), torch.from_numpy(sq(q, q)),
                                  torch.from_numpy(sq(g, g)), k1, k2, lam, chunk_rows=4)
        assert got.shape == (9, 23)
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("metric,normalize", [("sqeuclidean", True), ("sqeuclidean", False),
                                              ("euclidean", True), ("euclidean", False),
                                              ("cosine", False), ("dot", True), ("dot", False)])
def test_distances_from_features_chunk_by_chunk(metric, normalize):
    """The ranking computed from features a few rows at a time equals the one of the whole
    matrix, and every distance matches its definition."""
    gen = torch.Generator().manual_seed(3)
    q, g = torch.randn(37, 16, generator=gen), torch.randn(53, 16, generator=gen)
    rng = np.random.default_rng(3)
    q_pids, g_pids = rng.integers(0, 9, 37), rng.integers(0, 9, 53)
    q_cams, g_cams = rng.choice([3, 6], 37), rng.choice([1, 2, 4, 5], 53)
    lazy = FeatureDistances(q, g, metric, normalize)
    whole = feature_distance(q, g, metric, normalize)
    qd, gd = q.double(), g.double()
    if normalize or metric == "cosine":
        qd, gd = torch.nn.functional.normalize(qd, dim=1), torch.nn.functional.normalize(gd, dim=1)
    expected = {"sqeuclidean": torch.cdist(qd, gd) ** 2, "euclidean": torch.cdist(qd, gd),
                "cosine": 1 - qd @ gd.T,
                "dot": -(qd @ gd.T)}[metric]
    torch.testing.assert_close(whole.double(), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(lazy[5:9], whole[5:9])
    for rule in RULES.values():
        chunked = evaluate_ranking(lazy, q_pids, g_pids, q_cams, g_cams, rule, 10,
                                   chunk_elements=3 * 53)
        dense = evaluate_ranking(whole, q_pids, g_pids, q_cams, g_cams, rule, 10)
        np.testing.assert_allclose(chunked[0], dense[0])
        assert chunked[1:] == pytest.approx(dense[1:], abs=1e-12)


def test_a_new_protocol_rule_needs_no_dataset_name():
    """A made-up rule: drop the query's own camera group for cameras 7 and 8 together."""
    rule = RankingRule("two-rooms", skip="camera", camera_groups=((8, 7),), dedup_cmc=False)
    dist = np.array([[0.1, 0.2, 0.3]])
    cmc, m_ap, _ = evaluate_ranking(dist, [1], [1, 2, 1], [8], [7, 9, 9], rule, 3)
    np.testing.assert_allclose(cmc, [0, 1, 1])  # cam 7 is in cam 8's room: dropped
    assert m_ap == pytest.approx(1 / 2)
    with pytest.raises(ValueError, match="skip"):
        RankingRule("bad", skip="room")


def test_rerank_states_its_size_limit():
    from utils.rerank import MAX_RERANK_IMAGES, check_rerank_size

    check_rerank_size(3803, 3010)
    with pytest.raises(UserError, match=rf"exceeds the re-ranking limit of {MAX_RERANK_IMAGES}"
                                        r" images .*TEST.RERANK no"):
        check_rerank_size(20_000, 20_000)
