"""Training-loader throughput with and without the decoded cache.

Runs the full training pipeline (sampler, decoding or cache, augmentations,
collation, batch normalisation) for 0, 1 and 2 worker processes and prints
images per second as a markdown table. Batches are finished on the GPU when
there is one (as in training), else in this process with one intra-op thread
so that it does not compete with the workers for cores. Without ``--root`` it
generates a synthetic SYSU-MM01 (JPEG) or RegDB (BMP) dataset of realistic
image size in a temporary folder.

    python tools/bench_loader.py [--dataset sysumm|regdb] [--root DIR] [--workers 0 1 2]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data import build_dataset  # noqa: E402
from data.build import make_train_loader  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import cli_entry  # noqa: E402


def generate(dataset: str, root: Path, image_size: tuple[int, int], seed: int = 0) -> Path:
    """A synthetic dataset of a few hundred ``image_size`` images under ``root``."""
    from tools.make_synthetic_data import make_regdb, make_sysu

    if dataset == "regdb":
        return make_regdb(root / "RegDB", num_ids=40, images_per_id=6, size=image_size, seed=seed)
    return make_sysu(root / "SYSU-MM01", num_train=18, num_val=2, num_test=2,
                     images_per_cam=(4, 6), size=image_size, seed=seed)


def _throughput(cfg, batches: int, device: torch.device | None) -> tuple[float, int]:
    """(images per second over ``batches`` batches after a warm-up one, images timed)."""
    ds = build_dataset(cfg, verbose=False)
    loader, sampler = make_train_loader(cfg, ds, verbose=False, device=device)
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)  # worker start-up and first prefetch are not throughput
    images = 0
    start = time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            break
        images += len(batch["index"])
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    del it, loader
    return images / elapsed, images


def bench_loader(root: str | Path | None = None, dataset: str = "sysumm",
                 workers: tuple[int, ...] = (0, 1, 2), image_size: tuple[int, int] = (384, 192),
                 size_train: tuple[int, int] = (288, 144), batch_size: int = 32,
                 batches: int = 20, cache_dir: str | Path | None = None) -> list[dict]:
    """Measure training-loader throughput.

    Args:
        root: an existing dataset folder; None = generate one of ``image_size`` images.
        dataset: regdb or sysumm.
        workers: worker-process counts to measure.
        image_size: (height, width) of generated images.
        size_train: DATA.SIZE_TRAIN.
        batch_size: DATA.TRAIN_BATCH_SIZE.
        batches: timed batches per setting (after one warm-up batch).
        cache_dir: cache folder; None = a temporary one.

    Returns:
        Rows ``{'dataset', 'workers', 'decode_img_s', 'cache_img_s', 'speedup'}``.
    """
    device = torch.device("cuda") if torch.cuda.is_available() else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _bench(root, dataset, workers, image_size, size_train, batch_size, batches,
                      cache_dir, device)
    finally:
        torch.set_num_threads(threads)


def _bench(root, dataset, workers, image_size, size_train, batch_size, batches, cache_dir,
           device) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        tmp_path = Path(tmp)
        if root is None:
            root = generate(dataset, tmp_path, image_size)
        base = ["DATA.DATASET_NAME", dataset, "DATA.ROOT", str(root),
                "DATA.SIZE_TRAIN", f"{size_train[0]},{size_train[1]}",
                "DATA.TRAIN_BATCH_SIZE", str(batch_size), "DATA.SAMPLE_ID_INSTANCE", "4",
                "DATA.CHANNEL_AUG_PROB", "0.5", "TRAIN.ITERS_PER_EPOCH", str(batches + 1),
                "DATA.CACHE_DIR", str(cache_dir or tmp_path / "cache")]
        rows = []
        for w in workers:
            speed = {}
            for cache in ("no", "yes"):
                cfg = load_config(None, base + ["DATA.NUM_WORKERS", str(w), "DATA.CACHE", cache])
                speed[cache], _ = _throughput(cfg, batches, device)
            rows.append({"dataset": dataset, "workers": w, "decode_img_s": speed["no"],
                         "cache_img_s": speed["yes"], "speedup": speed["yes"] / speed["no"]})
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``bench_loader`` rows."""
    lines = ["| dataset | workers | decode (img/s) | cache (img/s) | speed-up |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['dataset']} | {r['workers']} | {r['decode_img_s']:.0f} | "
              f"{r['cache_img_s']:.0f} | {r['speedup']:.1f}x |" for r in rows]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_loader.py``."""
    parser = Parser(
        prog="tools/bench_loader.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/bench_loader.py --dataset regdb --workers 0 1",
            "python tools/bench_loader.py --root /data/SYSU-MM01 --cache-dir /tmp/vireid-cache",
        ])
    parser.add_argument("--dataset", choices=("sysumm", "regdb"), default="sysumm")
    parser.add_argument("--root", help="existing dataset folder (default: generate one)")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--image-size", type=int, nargs=2, default=[384, 192],
                        metavar=("H", "W"), help="size of generated images")
    parser.add_argument("--size-train", type=int, nargs=2, default=[288, 144],
                        metavar=("H", "W"))
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=20, help="timed batches per setting")
    parser.add_argument("--cache-dir", help="cache folder (default: a temporary one)")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    rows = bench_loader(args.root, args.dataset, tuple(args.workers), tuple(args.image_size),
                        tuple(args.size_train), args.batch_size, args.batches, args.cache_dir)
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    main()
