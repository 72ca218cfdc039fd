"""Training-step throughput: the real engine against a bare loop of the same model.

The engine side is :class:`engine.trainer.Trainer` itself: sampler, loader
(decoding, augmentations, normalisation), model, the criterion's loss dict,
the finiteness check, optimizer and scheduler steps, progress and metrics
logging. The bare side runs the same model, criterion and optimizer on one
batch already in memory. Steady state: a warm-up epoch first, then the best
of ``repeats`` timed epochs of each side (the machine may be shared). On CUDA
``--amp`` adds ResNet-50 at 288x144, batch 64, with and without mixed precision.

    python tools/bench_train.py [--model resnet18] [--size 128 64] [--batch 32]
        [--iters 10] [--workers 0] [--device auto] [--amp]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import data  # noqa: E402
from engine.distributed import resolve_device  # noqa: E402
from engine.logger import close_logger, setup_logger  # noqa: E402
from engine.trainer import Trainer  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import cli_entry  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bare_epoch(trainer: Trainer, batch: dict[str, torch.Tensor], iters: int) -> float:
    """Images/s of ``iters`` plain steps on ``batch`` (already on the device)."""
    model, criterion, opt = trainer.model, trainer.criterion, trainer.optimizer
    img, pid, modality = batch["img"], batch["pid"], batch["modality"]
    _sync(trainer.device)
    start = time.perf_counter()
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        with torch.autocast(trainer.device.type, dtype=trainer.amp_dtype, enabled=trainer.amp):
            loss, _ = criterion(model(img, modality), pid, modality)
        trainer.scaler.scale(loss).backward()
        trainer.scaler.step(opt)
        trainer.scaler.update()
    _sync(trainer.device)
    return iters * img.shape[0] / (time.perf_counter() - start)


def bench_case(root: Path, out: Path, model: str, size: tuple[int, int], batch: int,
               iters: int, workers: int, device: str, amp: bool, repeats: int = 2
               ) -> dict[str, Any]:
    """One row: engine and bare images/s (best of ``repeats`` epochs each) and their ratio."""
    cfg = load_config(None, [
        "DATA.ROOT", str(root), "DATA.SIZE_TRAIN", f"{size[0]},{size[1]}",
        "DATA.TRAIN_BATCH_SIZE", str(batch), "DATA.NUM_WORKERS", str(workers),
        "MODEL.NAME", model, "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", device,
        "LOSS.TERMS", "id,triplet", "TRAIN.MAX_EPOCHS", str(2 * repeats + 2),
        "TRAIN.ITERS_PER_EPOCH", str(iters), "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "",
        "TRAIN.LOG_PERIOD", "5", "TRAIN.AMP", "yes" if amp else "no",
        "TRAIN.OUTPUT_PATH", str(out)])
    dev = resolve_device(cfg)
    setup_logger(out, console=False)
    try:
        trainer = Trainer(cfg, data.build_dataset(cfg, verbose=False), dev)
        trainer.train_one_epoch(1)  # warm-up: allocator, workers, cudnn autotuning
        sample = next(iter(trainer.loader))
        fixed = {k: sample[k].to(dev) for k in ("img", "pid", "modality")}
        if trainer.channels_last:
            fixed["img"] = fixed["img"].contiguous(memory_format=torch.channels_last)
        _bare_epoch(trainer, fixed, 2)
        engine, bare = 0.0, 0.0
        for r in range(repeats):
            start = time.perf_counter()
            trainer.train_one_epoch(2 + r)
            _sync(dev)
            engine = max(engine, iters * batch / (time.perf_counter() - start))
            bare = max(bare, _bare_epoch(trainer, fixed, iters))
        precision = (str(trainer.amp_dtype).removeprefix("torch.") if trainer.amp
                     else "float32")
    finally:
        close_logger()
    return {"model": model, "size": f"{size[0]}x{size[1]}", "batch": batch, "device": str(dev),
            "precision": precision, "workers": workers, "engine_img_s": engine,
            "bare_img_s": bare, "ratio": engine / bare}


def rows(model: str = "resnet18", size: tuple[int, int] = (128, 64), batch: int = 32,
         iters: int = 10, workers: int = 0, device: str = "auto", amp_compare: bool = True,
         repeats: int = 2) -> list[dict[str, Any]]:
    """Benchmark rows (see :func:`bench_case`) on a synthetic RegDB generated in a temporary
    folder; on CUDA with ``amp_compare`` also ResNet-50 288x144 batch 64, fp32 and AMP."""
    from tools.make_synthetic_data import make_regdb

    cuda = torch.cuda.is_available() and device != "cpu"
    big = (288, 144)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        gen = big if cuda and amp_compare else size
        root = make_regdb(tmp / "RegDB", num_ids=40, images_per_id=6, size=gen, seed=0)
        out = [bench_case(root, tmp / "run", model, size, batch, iters, workers, device,
                          amp=True, repeats=repeats)]
        if cuda and amp_compare:
            for amp in (False, True):
                out.append(bench_case(root, tmp / f"r50_{amp}", "resnet50", big, 64, iters,
                                      max(workers, 4), device, amp=amp, repeats=repeats))
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    """The rows as a markdown table."""
    lines = ["| model | input | batch | device | precision | workers | engine img/s | "
             "bare loop img/s | engine / bare |", "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        lines.append(f"| {r['model']} | {r['size']} | {r['batch']} | {r['device']} | "
                     f"{r['precision']} | {r['workers']} | {r['engine_img_s']:.1f} | "
                     f"{r['bare_img_s']:.1f} | {r['ratio']:.2f} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_train.py``."""
    parser = Parser(
        prog="tools/bench_train.py",
        description="Training-step throughput of the engine against a bare loop of the "
                    "same model.",
        examples=[
            "python tools/bench_train.py --model resnet18 --size 128 64 --batch 32",
            "python tools/bench_train.py --device cuda --amp",
        ])
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 64), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=10, help="steps per timed epoch")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs per side")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--amp", action="store_true",
                        help="on CUDA also ResNet-50 288x144 batch 64, fp32 vs AMP")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    table = rows(args.model, tuple(args.size), args.batch, args.iters, args.workers,
                 args.device, args.amp, args.repeats)
    print(markdown(table))
    return 0


if __name__ == "__main__":
    main()
