"""Prove and measure the CUDA path in one command: ``make gpu-check``.

    python tools/gpu_check.py [--output gpu_check.json] [--cpu] [--only PATTERN] [--keep]

Draws a small synthetic SYSU-MM01 in a temporary folder (no real data, no
network: every model starts from random weights) and runs every check; each
records pass or fail and its numbers, a failure never stops the others, and
the exit status is 1 when a required check failed. Writes ``--output`` (JSON)
and prints a table.

Checks (``tools/device_checks``; sizes in ``common.GPU_PLAN``):

- ``fp32_agreement[<config>]``: every recipe of ``configs/``, eval-mode features of
  4 images at 128x64, CPU vs CUDA in fp32 with TF32 off: relative L2 error <= 1e-4.
- ``training[<config>,<precision>]``: every config, the first 30 iterations of
  its schedule at 64x32 in bf16, fp16 (grad scaler, TRAIN.AMP_DTYPE fp16) and
  fp32, on a still dataset (2 identities x (2 visible + 2 infrared), all in every
  batch of 8, no random augmentation, so the loss falls only by learning): every
  loss finite, the mean of the last 6 below the first 6.
- ``resume_fp16``: a run saved under fp16 resumes with its scaler state.
- ``channels_last``: first-step loss on vs off, fp32 (1e-3) and bf16 (3e-2).
- ``augment_on_device``: caj_sysumm batches (erasing, channel rules, visible
  copies) finished on the GPU equal those finished on the CPU (within 1e-5; the
  JSON says whether bit for bit).
- ``eval_sysu``, ``eval_20000x20000``: CPU and GPU CMC / mAP / mINP within 1e-9
  on the same float64 distances, both timed, with the engine's float32 path timed
  too; ``eval_100000x100000``: the GPU only, seconds and peak memory at two chunk
  sizes.
- ``torchrun``: ``torch.distributed.run --nproc_per_node=1 train_sysumm.py``
  (res50/sysumm.ini: random weights, evaluated at the end, stay finite without
  the non-local blocks) with NCCL and TRAIN.SYNC_BN yes (the layers become
  SyncBatchNorm; PyTorch skips their all-reduce in a group of one), then
  ``test.py --device cuda`` on its checkpoint.
- ``train_speed[64]``, ``train_speed[128]``: ResNet-50 (agw/sysumm.ini) at
  288x144, bf16 + channels_last: model-only ceiling, the engine's epoch from the
  decoded cache with 8 workers, their ratio, GPU busy fraction.
- ``inference_speed``: feature extraction of 4,096 images at 288x144.
- ``compile_speed`` (informational, never fails the run): model-only steps with
  and without torch.compile, in a child process bounded by the time budget.

Time on one H100 / H200 (estimates, to be replaced by the JSON's figures):
start-up and drawing the data 15 s; fp32 agreement 20 s; 21 training runs
90 s; resume and channels_last 20 s; evaluation 60 s (20k on the CPU about
20 s, 100k about 30 s); torchrun and test.py 40 s; training throughput 40 s;
inference 10 s; torch.compile up to the rest of the 360-s budget (typically
60-120 s). ``--cpu`` runs the same functions at tiny sizes (``common.CPU_PLAN``)
with one torch thread, in about a minute on 2 cores (56-62 s measured), so the
script is tested without a GPU.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from tools.device_checks import evaluation, launch, throughput, training  # noqa: E402
from tools.device_checks.common import (  # noqa: E402
    CONFIG_DIR,
    CPU_PLAN,
    GPU_PLAN,
    CheckResult,
    Context,
    recipe_name,
    run_check,
    shipped_configs,
)
from utils.cli import Parser  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402

BUDGET_S = {"cuda": 360, "cpu": 120}
# Figures shown in the printed table, per check group.
TABLE_KEYS = {
    "fp32_agreement": ("rel_l2",), "training": ("first_mean", "last_mean"),
    "resume": ("restored_scaler",), "channels_last": ("fp32", "bf16"),
    "augment": ("max_abs_diff",),
    "evaluation": ("difference", "cpu_s", "device_s", "device_engine_s"),
    "evaluation_largest": ("runs",), "torchrun": ("train_exit", "test_exit"),
    "train_speed": ("ceiling_img_s", "engine_img_s", "engine_over_ceiling", "gpu_busy"),
    "inference_speed": ("img_s",), "compile_speed": ("eager_img_s", "compiled_img_s", "speedup"),
}


def plan_checks(ctx: Context) -> list[tuple[str, str, Callable[[], dict], bool]]:
    """(name, group, function, required) of every check, in running order."""
    configs = shipped_configs()
    checks: list[tuple[str, str, Callable[[], dict], bool]] = []
    for config in configs:
        checks.append((f"fp32_agreement[{recipe_name(config)}]", "fp32_agreement",
                       lambda c=config: training.fp32_agreement(ctx, c), True))
    for config in configs:
        for precision in ctx.plan.precisions:
            checks.append((f"training[{recipe_name(config)},{precision}]", "training",
                           lambda c=config, p=precision: training.short_run(ctx, c, p), True))
    main = CONFIG_DIR / "agw/sysumm.ini"
    checks += [
        ("resume_fp16" if ctx.cuda else "resume", "resume",
         lambda: training.resume_with_scaler(ctx, main), True),
        ("channels_last", "channels_last", lambda: training.channels_last_loss(ctx, main), True),
        ("augment_on_device", "augment",
         lambda: training.augment_on_device(ctx, CONFIG_DIR / "caj/sysumm.ini"), True),
        ("eval_sysu", "evaluation", lambda: evaluation.sysu_size(ctx), True),
        (f"eval_{ctx.plan.big}x{ctx.plan.big}", "evaluation", lambda: evaluation.square(ctx),
         True),
        (f"eval_{ctx.plan.huge}x{ctx.plan.huge}", "evaluation_largest",
         lambda: evaluation.largest(ctx), True),
        ("torchrun", "torchrun", lambda: launch.torchrun_and_test(ctx), True),
    ]
    for batch in ctx.plan.speed_batches:
        checks.append((f"train_speed[{batch}]", "train_speed",
                       lambda b=batch: throughput.training(ctx, b), True))
    checks += [("inference_speed", "inference_speed", lambda: throughput.inference(ctx), True),
               ("compile_speed", "compile_speed", lambda: throughput.compile_speedup(ctx), False)]
    return checks


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} {_short(v)}" for k, v in value.items()
                               if not isinstance(v, (list, dict))) + "}"
    if isinstance(value, list):
        return "[" + "; ".join(_short(v) for v in value) + "]"
    return str(value)


def table(results: list[CheckResult]) -> str:
    """A plain-text table: check, result, seconds, key figures."""
    width = max(len(r.name) for r in results)
    lines = [f"{'check':<{width}}  {'result':<6} {'s':>6}  figures", "-" * (width + 60)]
    for r in results:
        verdict = "pass" if r.passed else ("FAIL" if r.required else "info")
        keys = TABLE_KEYS.get(r.group, ())
        shown = ", ".join(f"{k} {_short(r.figures[k])}" for k in keys if k in r.figures)
        lines.append(f"{r.name:<{width}}  {verdict:<6} {r.seconds:6.1f}  {shown}")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    """Device, CPU and library versions."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                    compute_capability=f"{props.major}.{props.minor}")
    return info


def draw_datasets(folder: Path, size: tuple[int, int]) -> tuple[Path, Path]:
    """Two synthetic SYSU-MM01 layouts of ``size`` images under ``folder``.

    Returns:
        (root, still): 20 + 4 training and 6 test identities; and 2 training
        identities with exactly 2 visible and 2 infrared images each (one camera
        of each kind kept), so that one batch holds all of them.
    """
    from data.sysu import IR_CAMS, RGB_CAMS
    from tools.make_synthetic_data import make_sysu

    root = make_sysu(folder / "SYSU-MM01", num_train=20, num_val=4, num_test=6,
                     images_per_cam=(2, 4), size=size, seed=0)
    still = make_sysu(folder / "SYSU-MM01-still", num_train=1, num_val=1, num_test=1,
                      images_per_cam=(2, 2), size=size, seed=1)
    for split in ("train", "val"):
        for pid in (int(x) for x in (still / "exp" / f"{split}_id.txt").read_text().split(",")):
            for cams in (RGB_CAMS, IR_CAMS):
                present = [c for c in cams if (still / f"cam{c}" / f"{pid:04d}").is_dir()]
                for cam in present[1:]:
                    shutil.rmtree(still / f"cam{cam}" / f"{pid:04d}")
    return root, still


def run(args: argparse.Namespace) -> int:
    """Draw the data, run the checks, write the JSON and print the table; the exit status."""
    from engine.logger import close_logger, setup_logger

    start = time.monotonic()
    mode = "cpu" if args.cpu else "cuda"
    if mode == "cuda" and not torch.cuda.is_available():
        print("error: no CUDA device; run with --cpu for the CPU version of the checks",
              file=sys.stderr)
        return 2
    out_dir = Path(args.output).resolve().parent
    if not out_dir.is_dir() or not os.access(out_dir, os.W_OK):
        raise UserError(f"--output {args.output}: {out_dir} is not a writable folder")
    plan = CPU_PLAN if args.cpu else GPU_PLAN
    if args.cpu:
        # One thread per process: on a shared machine more only wait for each other.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"
    workdir = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    real_stdout = sys.stdout
    results: list[CheckResult] = []
    try:
        setup_logger(workdir / "logs", console=False)
        drawn = time.monotonic()
        root, still = draw_datasets(workdir, plan.image_size)
        draw_s = time.monotonic() - drawn
        # Only a GPU run is held to its budget (the compile check takes what is left).
        deadline = start + BUDGET_S[mode] if mode == "cuda" else math.inf
        ctx = Context(torch.device(mode), plan, workdir, root, still, deadline)
        checks = plan_checks(ctx)
        if args.only:
            checks = [c for c in checks if args.only.search(c[0])]
            if not checks:
                raise UserError(f"--only {args.only.pattern}: no check's name matches; the "
                                f"checks: {', '.join(c[0] for c in plan_checks(ctx))}")

        def announce(line: str) -> None:
            print(f"[{time.monotonic() - start:6.1f} s] {line}", file=real_stdout, flush=True)

        with open(workdir / "output.txt", "w") as out, contextlib.redirect_stdout(out):
            for name, group, fn, required in checks:
                results.append(run_check(name, group, fn, required, announce))
    finally:
        close_logger()
        if args.keep:
            print(f"work folder kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - start
    passed = all(r.passed for r in results if r.required)
    report = {"mode": mode, "passed": passed, "seconds": round(seconds, 1),
              "budget_s": BUDGET_S[mode], "within_budget": seconds <= BUDGET_S[mode],
              "date": time.strftime("%Y-%m-%d %H:%M"), "machine": machine(),
              "dataset": {"layout": "SYSU-MM01 (synthetic)", "image_size": list(plan.image_size),
                          "ids": "20 train + 4 val (trained on) + 6 test", "draw_s": draw_s},
              "configs": [str(p.relative_to(CONFIG_DIR)) for p in shipped_configs()],
              "checks": [r.to_json() for r in results]}
    atomic_write_text(args.output, json.dumps(report, indent=2, default=str) + "\n")
    print(table(results))
    failed = [r.name for r in results if r.required and not r.passed]
    print(f"{len(results) - len(failed)}/{len(results)} checks passed in {seconds:.0f} s "
          f"(budget {BUDGET_S[mode]} s); written to {args.output}")
    if failed:
        print("failed: " + ", ".join(failed))
    return 0 if passed else 1


def pattern(text: str) -> re.Pattern[str]:
    """``--only``'s regular expression, or an argparse error."""
    try:
        return re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression ({exc})") from None


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/gpu_check.py``."""
    parser = Parser(
        prog="tools/gpu_check.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/gpu_check.py --output gpu_check.json",
            "python tools/gpu_check.py --cpu --only 'eval|resume'",
        ])
    parser.add_argument("--output", default="gpu_check.json", help="JSON report path")
    parser.add_argument("--cpu", action="store_true",
                        help="the CPU version at tiny sizes (no GPU needed)")
    parser.add_argument("--only", metavar="PATTERN", type=pattern,
                        help="run only the checks whose name matches this regular expression")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    return parser


@cli_entry
def main() -> int:
    """Command line."""
    return run(build_parser().parse_args())


if __name__ == "__main__":
    main()
