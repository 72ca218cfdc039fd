"""Feature extraction on the CPU: PyTorch eager against the exported TorchScript and ONNX files.

The demo's network type (two-stream ResNet-18, modality-specific stem, GeM,
BN feature; random weights: speed does not depend on them) extracts features
of one batch of infrared images, as a gallery extraction does. Every side gets
the same batch and the same number of intra-op threads (torch and
onnxruntime); after a warm-up, each timed run is ``batches`` batches, and the
table gives the mean and sample std of images/s over ``runs`` runs. Decoding
is not included (the same for every side).

    python tools/bench_export.py [--size 64 32] [--batch 32] [--threads 1 2] [--runs 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.export import (  # noqa: E402
    example_batch,
    export_model,
    load_torchscript,
    onnx_session,
)
from modeling import build_model  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.constants import INFRARED  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402

# The demo's network (configs/demo_synthetic.ini) on the CPU.
NETWORK = ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.SHARED_FROM", "1",
           "MODEL.POOLING", "gem", "MODEL.LAST_STRIDE", "1", "TEST.FEAT", "bn",
           "MODEL.DEVICE", "cpu"]


def _rate(run: Callable[[], Any], images: int, batches: int, runs: int) -> tuple[float, float]:
    """(mean, sample std) images/s of ``runs`` timed runs of ``batches`` calls of ``run``."""
    run()  # warm-up: allocations, onnxruntime's first-run optimisations
    rates = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(batches):
            run()
        rates.append(images * batches / (time.perf_counter() - start))
    return statistics.mean(rates), statistics.stdev(rates) if runs > 1 else 0.0


def bench_case(size: tuple[int, int], batch: int, threads: int, batches: int, runs: int,
               folder: Path) -> dict[str, Any]:
    """One row: eager, TorchScript and ONNX images/s at ``size``, ``batch``, ``threads``."""
    cfg = load_config(None, [*NETWORK, "DATA.SIZE_TEST", f"{size[0]},{size[1]}"])
    torch.manual_seed(0)
    model = build_model(cfg, 10).eval()
    img, _ = example_batch(cfg, batch)
    modality = torch.full((batch,), INFRARED, dtype=torch.long)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        row: dict[str, Any] = {"size": f"{size[0]}x{size[1]}", "batch": batch,
                               "threads": threads}

        def eager() -> None:
            with torch.inference_mode():
                model(img, modality)

        row["eager"] = _rate(eager, batch, batches, runs)
        ts_path = folder / f"bench_{size[0]}x{size[1]}.pt"
        export_model(cfg, model, ts_path, "torchscript")
        traced = load_torchscript(ts_path)

        def script() -> None:
            with torch.inference_mode():
                traced(img, modality)

        row["torchscript"] = _rate(script, batch, batches, runs)
        try:
            onnx_path = folder / f"bench_{size[0]}x{size[1]}.onnx"
            export_model(cfg, model, onnx_path, "onnx")
            session = onnx_session(onnx_path, threads)
            feeds = {"images": img.numpy(), "modality": modality.numpy()}
            row["onnx"] = _rate(lambda: session.run(None, feeds), batch, batches, runs)
        except UserError as exc:  # onnx not installed: the row says so
            row["onnx"] = None
            row["note"] = str(exc)
    finally:
        torch.set_num_threads(before)
    return row


def rows(sizes: Sequence[tuple[int, int]] = ((64, 32), (128, 64)), batch: int = 32,
         threads: Sequence[int] = (1, 2), batches: int = 5, runs: int = 3
         ) -> list[dict[str, Any]]:
    """Every (size, threads) row; ``(mean, std)`` images/s per side."""
    with tempfile.TemporaryDirectory() as tmp:
        return [bench_case(s, batch, t, batches, runs, Path(tmp)) for s in sizes
                for t in threads]


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a markdown table (mean ± std images/s)."""
    def cell(v: tuple[float, float] | None) -> str:
        return "n/a" if v is None else f"{v[0]:.0f} ± {v[1]:.0f}"

    lines = ["| input | batch | threads | PyTorch eager img/s | TorchScript img/s | "
             "ONNX (onnxruntime) img/s | ONNX / eager |", "|---|---|---|---|---|---|---|"]
    for r in table:
        ratio = f"{r['onnx'][0] / r['eager'][0]:.2f}" if r["onnx"] else "n/a"
        lines.append(f"| {r['size']} | {r['batch']} | {r['threads']} | {cell(r['eager'])} | "
                     f"{cell(r['torchscript'])} | {cell(r['onnx'])} | {ratio} |")
    notes = sorted({r["note"] for r in table if r.get("note")})
    return "\n".join(lines + [""] + notes if notes else lines)


@cli_entry
def main() -> int:
    parser = build_parser()
    args = parser.parse_args()
    return _run(args)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_export.py``."""
    parser = Parser(prog="tools/bench_export.py", description=__doc__.splitlines()[0],
                    examples=["python tools/bench_export.py --size 128 64 --batch 32 "
                              "--threads 1 2"])
    parser.add_argument("--size", type=int, nargs=2, action="append", metavar=("H", "W"),
                        help="input size (repeatable; default 64 32 and 128 64)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batches", type=int, default=5, help="batches per timed run")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per side")
    return parser


def _run(args: argparse.Namespace) -> int:
    sizes = [tuple(s) for s in args.size] if args.size else [(64, 32), (128, 64)]
    if min(args.batch, args.batches, args.runs, *args.threads) < 1:
        raise UserError("--batch, --threads, --batches and --runs must be >= 1")
    print(markdown(rows(sizes, args.batch, args.threads, args.batches, args.runs)))
    return 0


if __name__ == "__main__":
    main()
