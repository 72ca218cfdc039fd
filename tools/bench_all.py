"""``make bench``: loader, evaluation, export, training and learning benchmarks in one report.

    python tools/bench_all.py [--output BENCHMARKS.md] [--quick]

The report names the machine (CPU model and cores, GPU if any) and the torch
version; docs link it.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from tools import (  # noqa: E402
    bench_eval,
    bench_export,
    bench_learning,
    bench_loader,
    bench_recipes,
    bench_train,
)
from utils.cli import Parser  # noqa: E402
from utils.errors import cli_entry  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402


def machine() -> str:
    """One line naming the CPU, core count, GPU and library versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
    return (f"{cpu}, {os.cpu_count()} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}")


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_all.py``."""
    parser = Parser(
        prog="tools/bench_all.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/bench_all.py",
            "python tools/bench_all.py --quick --output /tmp/bench.md",
        ])
    parser.add_argument("--output", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--quick", action="store_true",
                        help="fewer batches, trials, seeds and steps, no 20k x 20k case "
                             "(a smoke run)")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    start = time.time()
    sections = [f"# Benchmarks\n\nMachine: {machine()}.\n",
                f"Measured {time.strftime('%Y-%m-%d')} with `make bench`.\n"]
    print("loader ...", flush=True)
    loader = bench_loader.bench_loader(batches=5 if args.quick else 20)
    sections += ["## Training loader (SYSU-MM01 layout, 384x192 JPEG -> 288x144, batch 32)\n",
                 "Images/s through the training transforms, decoding every epoch vs the "
                 "decoded-image cache (`DATA.CACHE`).\n", bench_loader.format_table(loader), ""]
    print("evaluation ...", flush=True)
    evals = bench_eval.rows(trials=2 if args.quick else 10, big=not args.quick)
    sections += ["## Evaluation (vectorized torch vs the per-query NumPy loop of the field's "
                 "baselines, 1 thread each)\n", bench_eval.markdown(evals), ""]
    print("exported models ...", flush=True)
    export_rows = bench_export.rows(sizes=[(64, 32)] if args.quick else [(64, 32), (128, 64)],
                                    threads=sorted({1, os.cpu_count() or 1}),
                                    runs=2 if args.quick else 3)
    sections += ["## Feature extraction on the CPU: PyTorch eager vs the exported TorchScript "
                 "and ONNX files (demo network, ResNet-18, infrared batch, mean ± std over "
                 "timed runs)\n", bench_export.markdown(export_rows), ""]
    print("training ...", flush=True)
    train = bench_train.rows(iters=4 if args.quick else 10)
    sections += ["## Training step (the engine with loader, sampler, augmentations, loss dict "
                 "and logging vs a bare loop on tensors in memory)\n",
                 bench_train.markdown(train), ""]
    print("learning guard ...", flush=True)
    guard = bench_learning.compare(seeds=2 if args.quick else 8, epochs=2 if args.quick else 8)
    sections += ["## Learning guard (the engine vs a bare loop of the same recipe, synthetic "
                 "RegDB, 30 training ids, 128x64)\n", bench_learning.markdown(guard), ""]
    print("paper recipes ...", flush=True)
    recipes = list(bench_recipes.RECIPES)
    check = bench_recipes.compare(recipes, seeds=2, steps=30 if args.quick else 300)
    sections += ["## Paper recipes at reduced size (AGW, CAJ, DEEN and MSCMNet as configured, "
                 "ResNet-18 from scratch, 64x32, synthetic RegDB)\n",
                 bench_recipes.markdown(check, recipes),
                 ""]
    sections.append(f"Total benchmark time: {(time.time() - start) / 60:.1f} min.\n")
    text = "\n".join(sections)
    atomic_write_text(args.output, text)
    print(text)
    print(f"written to {args.output}")
    return 0


if __name__ == "__main__":
    main()
