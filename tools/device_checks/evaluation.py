"""Evaluation checks: device and CPU metrics on the same distances, timings, the largest case.

Float32 distances computed on two devices may differ in their last bits, and
a near-tie may then rank differently; the identity check therefore computes
each distance matrix once, in float64 on the device, and ranks that same
matrix on both sides. The engine's own path (float32 ``FeatureDistances`` from
the features, a chunk of queries at a time) is timed separately.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tools.device_checks.common import Context, Figures, require, synchronize

# Bound on |CPU - device| of every CMC value, mAP and mINP (fractions, not %).
IDENTITY_TOL = 1e-9
DISTANCES = "float64, computed once on the device and ranked on both sides"


def distances64(q_feat: torch.Tensor, g_feat: torch.Tensor, device: torch.device,
                rows: int = 2048) -> torch.Tensor:
    """(Q, G) float64 squared euclidean distances of the L2-normalised features
    (TEST.NORM yes, TEST.DISTANCE euclidean), on ``device``.

    Args:
        q_feat: (Q, D) features; g_feat: (G, D) features (any device, any float type).
    """
    q = F.normalize(q_feat.to(device, torch.float64), dim=1)
    g = F.normalize(g_feat.to(device, torch.float64), dim=1)
    g_sq = g.pow(2).sum(1)[None]
    out = torch.empty((q.shape[0], g.shape[0]), dtype=torch.float64, device=device)
    for s in range(0, q.shape[0], rows):
        x = q[s:s + rows]
        out[s:s + rows] = (x.pow(2).sum(1, keepdim=True) + g_sq).addmm_(
            x, g.t(), alpha=-2).clamp_(min=0)
    return out


def _timed(device: torch.device, dist: Any, labels: tuple, chunk: int | None
           ) -> tuple[tuple[np.ndarray, float, float], float]:
    """(``evaluate_ranking`` result under the SYSU-MM01 rule, seconds)."""
    from data.sysu import SYSUMM01
    from utils.metrics import DEFAULT_CHUNK_ELEMENTS, evaluate_ranking

    synchronize(device)
    start = time.perf_counter()
    result = evaluate_ranking(dist, *labels, rule=SYSUMM01.rule,
                              chunk_elements=chunk or DEFAULT_CHUNK_ELEMENTS)
    synchronize(device)
    return result, time.perf_counter() - start


def _difference(a: tuple[np.ndarray, float, float], b: tuple[np.ndarray, float, float]
                ) -> float:
    return float(max(np.abs(a[0] - b[0]).max(), abs(a[1] - b[1]), abs(a[2] - b[2])))


def compare(ctx: Context, q_feat: torch.Tensor, g_feat: torch.Tensor, labels: tuple,
            cpu_engine: bool) -> dict[str, Any]:
    """One query/gallery pair: identity on shared float64 distances, and timings.

    Args:
        q_feat, g_feat: (Q, D), (G, D) CPU features.
        labels: (q_pids, g_pids, q_cams, g_cams) as NumPy arrays.
        cpu_engine: also time the engine's float32 path on the CPU.
    """
    from utils.distances import FeatureDistances

    dist = distances64(q_feat, g_feat, ctx.device)
    on_cpu, cpu_s = _timed(torch.device("cpu"), dist.cpu(), labels, None)
    on_device, device_s = _timed(ctx.device, dist, labels, ctx.plan.device_chunk)
    del dist
    features = FeatureDistances(q_feat.to(ctx.device), g_feat.to(ctx.device))
    engine, engine_s = _timed(ctx.device, features, labels, None)
    out = {"difference": _difference(on_cpu, on_device), "cpu_s": cpu_s, "device_s": device_s,
           "device_engine_s": engine_s, "engine_vs_float64": _difference(engine, on_cpu),
           "R1": float(on_cpu[0][0]), "mAP": on_cpu[1], "mINP": on_cpu[2]}
    if cpu_engine:
        out["cpu_engine_s"] = _timed(torch.device("cpu"),
                                     FeatureDistances(q_feat, g_feat), labels, None)[1]
    return out


def sysu_size(ctx: Context) -> Figures:
    """SYSU-MM01 multi-shot all-search size (3,803 x 3,010), seeded galleries per trial
    (the structure of ``tools/bench_eval.py``)."""
    from data.protocols import sample_gallery_seeded
    from tools.bench_eval import SYSU_IDS, sysu_structure

    plan = ctx.plan
    pool, q_pids, q_cams = sysu_structure()
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(SYSU_IDS + 1, plan.eval_dim, generator=gen)
    q_feat = centres[q_pids] + 2 * torch.randn(len(q_pids), plan.eval_dim, generator=gen)
    pool_pids = np.array([r.pid for r in pool])
    pool_cams = np.array([r.cam for r in pool])
    pool_feat = centres[pool_pids] + 2 * torch.randn(len(pool), plan.eval_dim, generator=gen)
    rows = []
    for trial in range(1, plan.sysu_trials + 1):
        idx = sample_gallery_seeded(pool, (1, 2, 4, 5), trial - 1, shots=10)
        labels = (q_pids, pool_pids[idx], q_cams, pool_cams[idx])
        rows.append(compare(ctx, q_feat, pool_feat[torch.from_numpy(idx)], labels, True))
    figures = _summary(rows, f"{len(q_pids)} x {len(idx)}", plan.sysu_trials)
    require(figures, figures["difference"] <= IDENTITY_TOL,
            f"device and CPU metrics differ by {figures['difference']:.3e}")
    return figures


def _summary(rows: list[dict[str, Any]], size: str, trials: int) -> Figures:
    out: Figures = {"size": size, "trials": trials,
                    "distances": DISTANCES, "tolerance": IDENTITY_TOL,
                    "difference": max(r["difference"] for r in rows),
                    "engine_vs_float64": max(r["engine_vs_float64"] for r in rows)}
    for key in ("cpu_s", "device_s", "device_engine_s", "cpu_engine_s"):
        if key in rows[0]:
            out[key] = sum(r[key] for r in rows)
    out["mean_R1"] = float(np.mean([r["R1"] for r in rows]))
    out["mean_mAP"] = float(np.mean([r["mAP"] for r in rows]))
    return out


def _square_case(n: int, ids: int, dim: int, seed: int, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor, tuple]:
    """n queries x n gallery images around ``ids`` identity centres, SYSU cameras."""
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, n), rng.integers(0, ids, n)
    labels = (q_pids, g_pids, rng.choice([3, 6], n), rng.choice([1, 2, 4, 5], n))
    gen = torch.Generator(device).manual_seed(seed)
    centres = torch.randn(ids, dim, generator=gen, device=device)
    q_feat = centres[torch.from_numpy(q_pids).to(device)].add_(
        torch.randn(n, dim, generator=gen, device=device), alpha=3.0)
    g_feat = centres[torch.from_numpy(g_pids).to(device)].add_(
        torch.randn(n, dim, generator=gen, device=device), alpha=3.0)
    return q_feat, g_feat, labels


def square(ctx: Context) -> Figures:
    """N x N (20,000 on a GPU) from features, SYSU camera rule."""
    n, dim = ctx.plan.big, ctx.plan.eval_dim
    q_feat, g_feat, labels = _square_case(n, n // 10, dim, 1, torch.device("cpu"))
    figures = _summary([compare(ctx, q_feat, g_feat, labels, False)], f"{n} x {n}", 1)
    require(figures, figures["difference"] <= IDENTITY_TOL,
            f"device and CPU metrics differ by {figures['difference']:.3e}")
    return figures


def largest(ctx: Context) -> Figures:
    """N x N (100,000 on a GPU) on the device only, with the engine's chunk and a larger
    one: seconds and peak device memory."""
    from utils.distances import FeatureDistances
    from utils.metrics import DEFAULT_CHUNK_ELEMENTS

    plan = ctx.plan
    q_feat, g_feat, labels = _square_case(plan.huge, plan.huge_ids, plan.eval_dim, 2, ctx.device)
    figures: Figures = {"size": f"{plan.huge} x {plan.huge}", "ids": plan.huge_ids,
                        "dim": plan.eval_dim, "runs": []}
    results = []
    for chunk in (DEFAULT_CHUNK_ELEMENTS, plan.huge_chunk):
        if ctx.cuda:
            torch.cuda.reset_peak_memory_stats(ctx.device)
            inputs = torch.cuda.memory_allocated(ctx.device)
        result, seconds = _timed(ctx.device, FeatureDistances(q_feat, g_feat), labels, chunk)
        results.append(result)
        run = {"chunk_elements": chunk, "seconds": seconds, "R1": float(result[0][0]),
               "mAP": result[1]}
        if ctx.cuda:
            run["peak_mib"] = torch.cuda.max_memory_allocated(ctx.device) / 2**20
            run["inputs_mib"] = inputs / 2**20
        figures["runs"].append(run)
        require(figures, 0.0 <= result[1] <= 1.0, f"mAP {result[1]} outside [0, 1]")
    figures["chunk_difference"] = _difference(*results)
    figures["peak_memory"] = ("torch.cuda.max_memory_allocated" if ctx.cuda
                              else "not measured on the CPU")
    return figures
