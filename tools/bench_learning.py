"""Learning guard: the engine against a bare training loop of the same recipe.

Both sides train the same network (a two-stream ResNet-18 from scratch), with
the same criterion, optimizer, schedule and number of steps, on the project's
synthetic RegDB (30 training identities, 128x64), and are tested with the
same RegDB protocol (trial 1, visible -> thermal). The engine side is
:class:`engine.trainer.Trainer` with its sampler, loader and augmentations;
the bare side is a plain loop over images held in memory, drawing P ids x
(K visible + K thermal) at random and applying per-image pad-and-crop and
flip in both. The engine must learn at least as well as the bare loop; each
figure is the mean (and sample std) R1 over ``--seeds`` seeds.

    python tools/bench_learning.py [--seeds 2] [--epochs 8] [--iters 20]
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

import numpy as np  # noqa: E402
import torch  # noqa: E402

import data  # noqa: E402
from data.transforms import Normalize, load_image  # noqa: E402
from engine.evaluate import evaluate  # noqa: E402
from engine.logger import close_logger, setup_logger  # noqa: E402
from engine.runtime import seed_everything  # noqa: E402
from engine.trainer import Trainer  # noqa: E402
from layers import build_criterion  # noqa: E402
from modeling import build_model  # noqa: E402
from solver import build_optimizer, build_scheduler  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.constants import INFRARED, VISIBLE  # noqa: E402
from utils.errors import cli_entry  # noqa: E402

SIZE = (128, 64)
PADDING = 8


def recipe(root: Path, out: Path, seed: int, epochs: int, iters: int) -> Any:
    """The shared recipe: pad-and-crop and flip only, so both sides augment alike."""
    return load_config(None, [
        "DATA.ROOT", str(root), "DATA.TRIAL", "1", "DATA.SIZE_TRAIN", f"{SIZE[0]},{SIZE[1]}",
        "DATA.SIZE_TEST", f"{SIZE[0]},{SIZE[1]}", "DATA.PADDING", str(PADDING),
        "DATA.RE_PROB", "0", "DATA.FLIP_PROB", "0.5", "DATA.NUM_WORKERS", "0",
        "DATA.TRAIN_BATCH_SIZE", "32", "DATA.SAMPLE_ID_INSTANCE", "2",
        "DATA.TEST_BATCH_SIZE", "128", "DATA.VERIFY_IMAGES", "no",
        "MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu",
        "MODEL.SHARED_FROM", "1", "MODEL.POOLING", "gem",
        "LOSS.TERMS", "id,triplet", "LOSS.LABEL_SMOOTH", "0.1", "LOSS.TRIPLET_MINING", "cross",
        "TRAIN.SEED", str(seed), "TRAIN.MAX_EPOCHS", str(epochs),
        "TRAIN.ITERS_PER_EPOCH", str(iters), "TRAIN.WARMUP_EPOCHS", "1",
        "TRAIN.STEPS", f"{max(2, epochs - 2)}", "TRAIN.EVAL_PERIOD", "0",
        "TRAIN.CHECKPOINT_PERIOD", str(epochs), "TRAIN.LOG_PERIOD", "1000",
        "TRAIN.OUTPUT_PATH", str(out)])


def headline_r1(cfg: Any, model: torch.nn.Module, dataset: Any) -> float:
    """R1 (%) of the dataset's headline setting."""
    with torch.no_grad():
        return float(evaluate(cfg, model.eval(), dataset, device=torch.device("cpu"))
                     ["headline"]["R1"])


def engine_run(cfg: Any, dataset: Any) -> float:
    """Train with the engine (Trainer.fit) and test the last epoch."""
    setup_logger(Path(cfg.TRAIN.OUTPUT_PATH), console=False)
    try:
        trainer = Trainer(cfg, dataset, torch.device("cpu"))
        trainer.fit()
        return headline_r1(cfg, trainer.model, dataset)
    finally:
        close_logger()


def _pad_crop_flip(img: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    """(3, H, W) uint8 -> zero-padded by PADDING, randomly cropped back, maybe mirrored."""
    _, h, w = img.shape
    padded = torch.nn.functional.pad(img, (PADDING,) * 4)
    y, x = (int(v) for v in rng.integers(0, 2 * PADDING + 1, size=2))
    out = padded[:, y:y + h, x:x + w]
    return out.flip(2) if rng.random() < 0.5 else out


def bare_run(cfg: Any, dataset: Any) -> float:
    """The same model, criterion, optimizer and schedule in a plain loop on tensors."""
    seed_everything(cfg.TRAIN.SEED)
    rng = np.random.default_rng(cfg.TRAIN.SEED)
    records = dataset.train
    normalize = Normalize(cfg)
    images = torch.stack([torch.from_numpy(load_image(r.path, SIZE).copy()).permute(2, 0, 1)
                          for r in records])
    pids = torch.tensor([r.pid for r in records])
    modality = torch.tensor([r.modality for r in records])
    pools = {(p, m): np.flatnonzero((pids == p).numpy() & (modality == m).numpy())
             for p in pids.unique().tolist() for m in (VISIBLE, INFRARED)}
    num_classes = int(pids.max()) + 1
    model = build_model(cfg, num_classes)
    criterion = build_criterion(cfg, num_classes, model.feat_dim)
    optimizer = build_optimizer(cfg, model, criterion)
    iters = cfg.TRAIN.ITERS_PER_EPOCH
    scheduler = build_scheduler(cfg, optimizer, iters)
    k = cfg.DATA.SAMPLE_ID_INSTANCE
    p = cfg.DATA.TRAIN_BATCH_SIZE // (2 * k)
    ids = sorted({pid for pid, _ in pools})
    model.train()
    for _ in range(cfg.TRAIN.MAX_EPOCHS * iters):
        chosen = rng.choice(ids, p, replace=False)
        idx = np.concatenate([rng.choice(pools[(int(c), m)], k, replace=False)
                              for m in (VISIBLE, INFRARED) for c in chosen])
        img = normalize(torch.stack([_pad_crop_flip(images[i], rng) for i in idx]))
        loss, _ = criterion(model(img, modality[idx]), pids[idx], modality[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
    return headline_r1(cfg, model, dataset)


def compare(seeds: int = 2, epochs: int = 8, iters: int = 20) -> dict[str, Any]:
    """Mean and sample std of R1 over ``seeds`` seeds for the engine and the bare loop."""
    from tools.make_synthetic_data import make_regdb

    # Briefly trained CPU weights produce denormal activations that slow the
    # evaluation tenfold; flushing them to zero treats both sides alike.
    torch.set_flush_denormal(True)
    out: dict[str, Any] = {"engine": [], "bare": [], "seconds": {"engine": 0.0, "bare": 0.0}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_regdb(tmp / "RegDB", num_ids=60, images_per_id=10, size=SIZE, seed=0,
                          num_train=30)
        for seed in range(seeds):
            cfg = recipe(root, tmp / f"run{seed}", seed, epochs, iters)
            dataset = data.build_dataset(cfg, verbose=False)
            for side, fn in (("engine", engine_run), ("bare", bare_run)):
                start = time.perf_counter()
                out[side].append(fn(cfg, dataset))
                out["seconds"][side] += time.perf_counter() - start
                print(f"seed {seed} {side}: R1 {out[side][-1]:.2f}", flush=True)
    for side in ("engine", "bare"):
        v = np.array(out[side])
        out[f"{side}_mean"] = float(v.mean())
        out[f"{side}_std"] = float(v.std(ddof=1)) if len(v) > 1 else 0.0
    out.update(seeds=seeds, steps=epochs * iters)
    return out


def markdown(res: dict[str, Any]) -> str:
    """The comparison as a markdown table."""
    lines = ["| side | R1 per seed (%) | mean R1 (%) | std | time (s) |",
             "|---|---|---:|---:|---:|"]
    for side, label in (("engine", "engine (Trainer)"), ("bare", "bare loop")):
        per = ", ".join(f"{v:.2f}" for v in res[side])
        lines.append(f"| {label} | {per} | {res[f'{side}_mean']:.2f} | "
                     f"{res[f'{side}_std']:.2f} | {res['seconds'][side]:.0f} |")
    diff = res["engine_mean"] - res["bare_mean"]
    se = difference_se(res)
    verdict = "holds" if diff >= 0 else "FAILS"
    lines.append(f"\n{res['seeds']} seeds, {res['steps']} steps of 32 images each. Engine - bare: "
                 f"{diff:+.2f} points (standard error of the difference {se:.2f}); the guard "
                 f"(engine mean >= bare mean) {verdict}.")
    return "\n".join(lines)


def difference_se(res: dict[str, Any]) -> float:
    """Standard error of (engine mean - bare mean), the two sides taken as independent.

    Both sides start from the same weights, but their batches are drawn by
    different random streams, so the per-seed pairs are not matched draws.
    """
    n = res["seeds"]
    return float(np.sqrt((res["engine_std"] ** 2 + res["bare_std"] ** 2) / n))


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_learning.py``."""
    parser = Parser(
        prog="tools/bench_learning.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/bench_learning.py",
            "python tools/bench_learning.py --seeds 8 --epochs 8 --iters 20",
        ])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20, help="steps per epoch")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    res = compare(args.seeds, args.epochs, args.iters)
    print(markdown(res))
    return 0 if res["engine_mean"] >= res["bare_mean"] else 1


if __name__ == "__main__":
    main()
