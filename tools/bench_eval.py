"""Benchmark the vectorized metrics against the per-query NumPy loop of the field's baselines.

Cases (synthetic features and ids with the real sizes):

- SYSU-MM01 multi-shot all-search: 3,803 IR queries (96 ids, cams 3 and 6)
  against 10 galleries of 3,010 RGB images sampled from a pool (up to 10 per id
  per camera), evaluated from the features with SYSU-MM01's ranking rule;
- 20,000 queries x 20,000 gallery images (2,048-d features, 2,000 ids, SYSU
  camera rule), run in a child process whose peak resident memory
  (``ru_maxrss``) is reported, torch and the features included: the distances
  are computed a chunk of queries at a time, so the 20k x 20k matrix (1.6 GB
  in float32) never exists whole.

Both sides rank the same distances and must give the same numbers (the loop
gets the whole matrix).
The loop ranks every query with a stable argsort, as the metrics do, so ties
cannot make them differ.

    python tools/bench_eval.py [--trials N] [--skip-20k]

``rows(...)`` returns the table rows for ``tools/bench_all.py``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.base import ImageRecord  # noqa: E402
from data.protocols import sample_gallery_seeded  # noqa: E402
from data.sysu import SYSUMM01  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.metrics import (  # noqa: E402
    DEFAULT_CHUNK_ELEMENTS,
    FeatureDistances,
    evaluate_ranking,
)

SYSU_IDS, SYSU_QUERIES, SYSU_GALLERY = 96, 3803, 3010
BIG, BIG_IDS, BIG_DIM = 20_000, 2_000, 2048
RULE = SYSUMM01.rule


def whole_matrix(q_feat: torch.Tensor, g_feat: torch.Tensor) -> np.ndarray:
    """The (Q, G) distances for the loop, computed in the same row chunks as the
    metrics compute them, so both sides rank bit-identical numbers."""
    dist = FeatureDistances(q_feat, g_feat)
    step = max(1, DEFAULT_CHUNK_ELEMENTS // g_feat.shape[0])
    return torch.cat([dist[s:s + step] for s in range(0, q_feat.shape[0], step)]).numpy()


def baseline_loop(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                  q_cams: np.ndarray, g_cams: np.ndarray, max_rank: int = 20,
                  block: int | None = None) -> tuple[np.ndarray, float, float]:
    """SYSU metrics one query at a time, the way the AGW-family code computes them.

    Argsort of the whole matrix (in row blocks when ``block`` is given, to fit
    memory), then per query: drop cam-2 entries for a cam-3 query, de-duplicate
    the ranked ids with ``np.unique``, and build the precision list in Python.
    """
    num_q = distmat.shape[0]
    block = block or num_q
    cmc_all, aps, inps = [], [], []
    for s in range(0, num_q, block):
        order = np.argsort(distmat[s:s + block], axis=1, kind="stable")
        for r in range(order.shape[0]):
            q = s + r
            ranked = g_pids[order[r]]
            keep = ~((q_cams[q] == 3) & (g_cams[order[r]] == 2))
            ids = ranked[keep]
            first = np.unique(ids, return_index=True)[1]
            distinct = np.array([ids[i] for i in sorted(first)])
            match = (ids == q_pids[q]).astype(np.int32)
            if not match.any():
                continue
            dedup = (distinct == q_pids[q]).astype(np.int32).cumsum()
            cmc_all.append(np.minimum(dedup[:max_rank], 1))
            hits = match.cumsum()
            last = np.flatnonzero(match).max()
            inps.append(hits[last] / (last + 1.0))
            precision = np.asarray([x / (i + 1.0) for i, x in enumerate(hits)]) * match
            aps.append(precision.sum() / match.sum())
    cmc = np.asarray(cmc_all, dtype=np.float64).mean(0)
    return cmc, float(np.mean(aps)), float(np.mean(inps))


def sysu_structure(seed: int = 0) -> tuple[list[ImageRecord], np.ndarray, np.ndarray]:
    """A gallery pool with 301 (id, RGB camera) folders of 10..40 images (so multi-shot
    galleries hold 3,010) and 3,803 IR queries over 96 ids."""
    rng = np.random.default_rng(seed)
    folders = [(p, c) for p in range(1, SYSU_IDS + 1) for c in (1, 2, 4, 5)]
    chosen = sorted(rng.choice(len(folders), SYSU_GALLERY // 10, replace=False))
    pool = []
    for i in chosen:
        p, c = folders[i]
        pool += [ImageRecord(f"cam{c}/{p:04d}/{k:04d}.jpg", p, c, 0)
                 for k in range(1, int(rng.integers(10, 41)) + 1)]
    q_pids = np.sort(rng.integers(1, SYSU_IDS + 1, SYSU_QUERIES))
    q_cams = rng.choice([3, 6], SYSU_QUERIES)
    return pool, q_pids, q_cams


def bench_sysu(trials: int = 10, check: bool = True) -> dict[str, Any]:
    """Time the metrics (distances included) and the loop on ``trials`` multi-shot
    all-search galleries."""
    pool, q_pids, q_cams = sysu_structure()
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(SYSU_IDS + 1, 2048, generator=gen)
    q_feat = centers[q_pids] + 2 * torch.randn(len(q_pids), 2048, generator=gen)
    pool_pids = np.array([r.pid for r in pool])
    pool_cams = np.array([r.cam for r in pool])
    pool_feat = centers[pool_pids] + 2 * torch.randn(len(pool), 2048, generator=gen)
    ours = loop = 0.0
    r1 = []
    for trial in range(1, trials + 1):
        idx = sample_gallery_seeded(pool, (1, 2, 4, 5), trial - 1, shots=10)
        assert len(idx) == SYSU_GALLERY
        g_feat = pool_feat[torch.from_numpy(idx)]
        start = time.perf_counter()
        got = evaluate_ranking(FeatureDistances(q_feat, g_feat), q_pids, pool_pids[idx],
                               q_cams, pool_cams[idx], RULE)
        ours += time.perf_counter() - start
        r1.append(got[0][0])
        if check:
            d = whole_matrix(q_feat, g_feat)
            start = time.perf_counter()
            ref = baseline_loop(d, q_pids, pool_pids[idx], q_cams, pool_cams[idx])
            loop += time.perf_counter() - start
            np.testing.assert_allclose(got[0], ref[0], atol=1e-9)
            assert abs(got[1] - ref[1]) < 1e-9 and abs(got[2] - ref[2]) < 1e-9
    return {"case": f"SYSU multi-shot all-search, {trials} trials",
            "size": f"{SYSU_QUERIES:,} x {SYSU_GALLERY:,}", "ours_s": ours,
            "loop_s": loop if check else None, "peak_rss_mb": None,
            "same_numbers": check, "mean_R1": float(np.mean(r1))}


def _big_inputs() -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray,
                           np.ndarray]:
    """Features of 20k queries and 20k gallery images around 2k identity centres."""
    gen = torch.Generator().manual_seed(1)
    rng = np.random.default_rng(1)
    q_pids, g_pids = rng.integers(0, BIG_IDS, BIG), rng.integers(0, BIG_IDS, BIG)
    centres = torch.randn(BIG_IDS, BIG_DIM, generator=gen)
    q_feat = centres[q_pids].add_(torch.randn(BIG, BIG_DIM, generator=gen), alpha=3.0)
    g_feat = centres[g_pids].add_(torch.randn(BIG, BIG_DIM, generator=gen), alpha=3.0)
    return q_feat, g_feat, q_pids, g_pids, rng.choice([3, 6], BIG), rng.choice([1, 2, 4, 5], BIG)


def _child_big(threads: int) -> None:
    """Run in a fresh process: allocate, evaluate, report time and peak memory as JSON."""
    torch.set_num_threads(threads)
    q_feat, g_feat, q_pids, g_pids, q_cams, g_cams = _big_inputs()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    cmc, m_ap, m_inp = evaluate_ranking(FeatureDistances(q_feat, g_feat), q_pids, g_pids,
                                        q_cams, g_cams, RULE)
    elapsed = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": elapsed, "rss_before_kb": before, "peak_kb": peak,
                      "cmc": cmc.tolist(), "mAP": m_ap, "mINP": m_inp}))


def bench_big(check: bool = True, threads: int = 1) -> dict[str, Any]:
    """The 20k x 20k case: ours in a child process (peak memory), the loop here."""
    proc = subprocess.run([sys.executable, __file__, "--child-20k", "--threads", str(threads)],
                          capture_output=True, text=True, check=True)
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    loop = None
    if check:
        q_feat, g_feat, q_pids, g_pids, q_cams, g_cams = _big_inputs()
        dist = whole_matrix(q_feat, g_feat)
        start = time.perf_counter()
        ref = baseline_loop(dist, q_pids, g_pids, q_cams, g_cams, block=1000)
        loop = time.perf_counter() - start
        np.testing.assert_allclose(child["cmc"], ref[0], atol=1e-9)
        assert abs(child["mAP"] - ref[1]) < 1e-9 and abs(child["mINP"] - ref[2]) < 1e-9
    return {"case": "20k x 20k from 2048-d features, SYSU camera rule",
            "size": f"{BIG:,} x {BIG:,}",
            "ours_s": child["seconds"], "loop_s": loop,
            "peak_rss_mb": child["peak_kb"] / 1024,
            "input_rss_mb": child["rss_before_kb"] / 1024, "same_numbers": check}


def rows(trials: int = 10, big: bool = True, check: bool = True, threads: int = 1
         ) -> list[dict[str, Any]]:
    """Benchmark rows: case, size, ours_s, loop_s, speedup, peak_rss_mb, same_numbers.

    ``threads`` sets torch's CPU threads for the vectorized side (the loop is
    single-threaded NumPy; 1 compares like with like).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = [bench_sysu(trials, check)]
        if big:
            out.append(bench_big(check, threads))
    finally:
        torch.set_num_threads(previous)
    for row in out:
        row["speedup"] = row["loop_s"] / row["ours_s"] if row["loop_s"] else None
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| case | distances | vectorized (s) | per-query loop (s) | speed-up | "
             "peak RSS (MiB) | same numbers |", "|---|---|---|---|---|---|---|"]
    for r in table:
        loop = f"{r['loop_s']:.2f}" if r["loop_s"] else "-"
        speed = f"{r['speedup']:.1f}x" if r["speedup"] else "-"
        peak = (f"{r['peak_rss_mb']:.0f} ({r['input_rss_mb']:.0f} before evaluating)"
                if r["peak_rss_mb"] else "-")
        lines.append(f"| {r['case']} | {r['size']} | {r['ours_s']:.2f} | {loop} | {speed} | "
                     f"{peak} | {'yes' if r['same_numbers'] else 'not checked'} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_eval.py``."""
    parser = Parser(
        prog="tools/bench_eval.py", description=__doc__.split("\n\n")[0],
        examples=[
            "python tools/bench_eval.py",
            "python tools/bench_eval.py --trials 2 --skip-20k",
            "python tools/bench_eval.py --no-check --threads 2",
        ])
    parser.add_argument("--trials", type=int, default=10, help="SYSU gallery trials")
    parser.add_argument("--skip-20k", action="store_true", help="leave out the 20k case")
    parser.add_argument("--no-check", action="store_true",
                        help="time only the vectorized metrics (no loop, no comparison)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads of the vectorized side (default 1, like the loop)")
    parser.add_argument("--child-20k", action="store_true", help=argparse.SUPPRESS)
    return parser


def main() -> None:
    """Command line."""
    args = build_parser().parse_args()
    if args.child_20k:
        _child_big(args.threads)
        return
    print(f"torch {torch.__version__}, numpy {np.__version__}, {args.threads} torch thread(s)")
    print(markdown(rows(args.trials, not args.skip_20k, not args.no_check, args.threads)))


if __name__ == "__main__":
    main()
