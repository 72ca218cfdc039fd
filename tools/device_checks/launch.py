"""torchrun with one process (NCCL on CUDA, gloo on the CPU) and SyncBatchNorm, then
``test.py`` on the checkpoint it wrote."""
from __future__ import annotations

import json
import subprocess
import sys

from tools.device_checks.common import (
    CONFIG_DIR,
    REPO,
    Context,
    Figures,
    load,
    require,
    small_batch,
    start_rate,
    train_overrides,
)
from utils.config import config_to_ini

# No non-local blocks: from random weights after a few steps, their dot products
# overflow on BatchNorm statistics of so few batches, and test.py would get NaN features.
CONFIG = CONFIG_DIR / "res50/sysumm.ini"


def _timeout(ctx: Context) -> float:
    """A child's time limit: the plan's, but no further than the budget allows (>= 60 s)."""
    return min(ctx.plan.subprocess_timeout, max(60.0, ctx.remaining()))


def _tail(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout[-1500:] + proc.stderr[-1500:]).strip().replace("\n", " | ")


def torchrun_and_test(ctx: Context) -> Figures:
    """``python -m torch.distributed.run --nproc_per_node=1 train_sysumm.py`` with
    TRAIN.SYNC_BN yes (2 epochs, the dataset's test at the end), then
    ``test.py --model-path last.pth --device <device>`` on one gallery trial."""
    plan = ctx.plan
    run = ctx.workdir / "runs" / "torchrun"
    over = train_overrides(ctx, "torchrun", plan.train_size, small_batch(CONFIG), 3, 2, "auto",
                           plan.workers)
    cfg = load(CONFIG, [*over, *start_rate(CONFIG), "TRAIN.SYNC_BN", "yes",
                        "TEST.NUM_TRIALS", "2"])
    ini = ctx.workdir / "torchrun.ini"
    ini.write_text(config_to_ini(cfg))
    backend = "nccl" if ctx.cuda else "gloo"
    figures: Figures = {"backend_expected": backend, "config": CONFIG.name}
    train = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
         "train_sysumm.py", "--config", str(ini)],
        cwd=REPO, capture_output=True, text=True, timeout=_timeout(ctx))
    figures["train_exit"] = train.returncode
    require(figures, train.returncode == 0, f"torchrun exit {train.returncode}: {_tail(train)}")
    log_path = run / "log.txt"
    log = log_path.read_text() if log_path.is_file() else ""
    start = next((line for line in log.splitlines() if " training " in line), "")
    figures["start_line"] = start
    require(figures, f" x1 ({backend})" in start,
            f"the run did not train in a one-process {backend} group: {start!r}")
    if ctx.cuda:
        require(figures, ", SyncBatchNorm" in start, "the model was not converted to "
                "SyncBatchNorm")
    else:
        require(figures, "TRAIN.SYNC_BN ignored" in log, "no note that SYNC_BN needs CUDA")
    checkpoint = run / "last.pth"
    require(figures, checkpoint.is_file(), f"{checkpoint} not written")
    if not checkpoint.is_file():
        return figures
    out = ctx.workdir / "test_results.json"
    test = subprocess.run(
        [sys.executable, "test.py", "--model-path", str(checkpoint), "--device",
         ctx.device.type, "--trial", "1", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=_timeout(ctx))
    figures["test_exit"] = test.returncode
    require(figures, test.returncode == 0, f"test.py exit {test.returncode}: {_tail(test)}")
    if test.returncode == 0:
        results = json.loads(out.read_text())
        figures["test_settings"] = sorted(results["settings"])
        figures["test_headline"] = results["headline"]
        require(figures, len(results["settings"]) == 4, "test.py did not run the four SYSU "
                "settings")
    return figures
