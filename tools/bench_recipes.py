"""Learning check of the paper recipes: AGW, CAJ, DEEN and MSCMNet as configured, at reduced size.

The configs (``configs/agw/regdb.ini``, ``configs/caj/regdb.ini``,
``configs/deen/regdb.ini``, ``configs/mscmnet/regdb.ini``, ...) train on the
project's synthetic RegDB with everything that makes them what they are
(network, losses, batch shape, augmentations, optimizer groups, per-epoch
warmup, test feature) and only these reductions, the same for all: a
ResNet-18 from scratch instead of an ImageNet ResNet-50 (AGW's non-local blocks
then 1 after layer2 and 1 after layer3, as ResNet-18 stages have 2 blocks;
MSCMNet's attention blocks built for the 4x2 layer3 map with 1 head of 8 dims),
64x32 images (padding 4), the same number of steps, and each schedule's epochs
(warmup, decays, length) scaled in proportion to it. Each figure is the mean
and sample std of R1 visible->thermal (trial 1) over ``--seeds`` seeds.

    python tools/bench_recipes.py [--seeds 2] [--steps 300]
                                  [--recipes agw/regdb caj/regdb deen/regdb mscmnet/regdb]
                                  [--set KEY VALUE ...]

``--set KEY VALUE`` (repeatable) changes every recipe before it is reduced, an
ablation: ``--set TRAIN.STEPS "20, 50" --set TRAIN.MAX_EPOCHS 81`` gives DEEN
AGW's schedule, which is then scaled like any other.
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

from engine.distributed import DistInfo  # noqa: E402
from engine.launch import train_and_test  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.errors import cli_entry  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ITERS = 15  # steps per (reduced) epoch
SIZE = (64, 32)  # reduced input (height, width)
RESNET_STRIDES = (4, 1, 2, 2, 1)  # stem, layer1..layer4 (LAST_STRIDE 1)
RECIPES = ("agw/regdb", "caj/regdb", "deen/regdb", "mscmnet/regdb")


def attention_heads(size: tuple[int, int], published: int = 32) -> int:
    """MSCMNet's head count at a reduced size: the most heads dividing the layer3 map's
    positions whose width stays at least the published 9 (288 / 32), else 1."""
    from modeling.methods.mscmnet.parts import layer3_size

    h, w = layer3_size(size, RESNET_STRIDES)
    dims, width = h * w, 288 // published
    fits = [k for k in range(1, dims + 1) if dims % k == 0 and dims // k >= width]
    return max(fits) if fits else 1


def reduced(name: str, root: Path, out: Path, seed: int, steps: int,
            extra: list[str] | None = None) -> Any:
    """The recipe ``name`` (changed by ``extra`` KEY VALUE pairs) at reduced size, its
    schedule scaled to ``steps`` steps."""
    base = ["MODEL.PRETRAIN_PATH", "", *(extra or [])]
    full = load_config(REPO / "configs" / f"{name}.ini", base)
    epochs = max(2, round(steps / ITERS))
    scale = epochs / full.TRAIN.MAX_EPOCHS
    milestones = sorted({max(1, round(s * scale)) for s in full.TRAIN.STEPS} - {epochs})
    overrides = [
        "DATA.ROOT", str(root), "DATA.SIZE_TRAIN", ",".join(map(str, SIZE)),
        "DATA.SIZE_TEST", ",".join(map(str, SIZE)),
        "DATA.PADDING", "4", "DATA.RESIZE", "bilinear", "DATA.NUM_WORKERS", "0",
        "DATA.VERIFY_IMAGES", "no", "MODEL.NAME", "resnet18", "MODEL.DEVICE", "cpu",
        "TRAIN.SEED", str(seed), "TRAIN.MAX_EPOCHS", str(epochs),
        "TRAIN.ITERS_PER_EPOCH", str(ITERS),
        "TRAIN.WARMUP_EPOCHS",
        str(max(1, round(full.TRAIN.WARMUP_EPOCHS * scale)) if full.TRAIN.WARMUP_EPOCHS else 0),
        "TRAIN.STEPS", ", ".join(map(str, milestones)), "TRAIN.EVAL_PERIOD", "0",
        "TRAIN.CHECKPOINT_PERIOD", str(epochs), "TRAIN.LOG_PERIOD", "1000",
        "TRAIN.OUTPUT_PATH", str(out)]
    if any(full.AGW.NON_LOCAL_BLOCKS):
        overrides += ["AGW.NON_LOCAL_BLOCKS", "0, 1, 1, 0"]
    if full.MSCMNET.ATTENTION:
        overrides += ["MSCMNET.HEADS", str(attention_heads(SIZE, full.MSCMNET.HEADS))]
    return load_config(REPO / "configs" / f"{name}.ini", [*base, *overrides])


def compare(recipes: list[str], seeds: int = 2, steps: int = 300,
            extra: list[str] | None = None) -> dict[str, Any]:
    """R1 per seed, mean, std and seconds of every recipe."""
    from tools.make_synthetic_data import make_regdb

    torch.set_flush_denormal(True)  # briefly trained CPU weights: keep evaluation fast
    out: dict[str, Any] = {r: {"R1": [], "seconds": 0.0} for r in recipes}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = make_regdb(tmp / "RegDB", num_ids=160, images_per_id=10, size=(64, 32), seed=0,
                          num_train=120)
        for seed in range(seeds):
            for name in recipes:
                cfg = reduced(name, root, tmp / f"{name}_{seed}", seed, steps, extra)
                start = time.perf_counter()
                res = train_and_test(cfg, None, DistInfo(), torch.device("cpu"))
                out[name]["seconds"] += time.perf_counter() - start
                out[name]["R1"].append(float(res["headline"]["R1"]))
                print(f"seed {seed} {name}: R1 {out[name]['R1'][-1]:.2f}", flush=True)
    for name in recipes:
        v = np.array(out[name]["R1"])
        out[name].update(mean=float(v.mean()), std=float(v.std(ddof=1)) if len(v) > 1 else 0.0)
    out["seeds"], out["steps"] = seeds, steps
    return out


def markdown(res: dict[str, Any], recipes: list[str]) -> str:
    """The comparison as a markdown table."""
    lines = ["| recipe (reduced) | R1 per seed (%) | mean R1 (%) | std | time (s) |",
             "|---|---|---:|---:|---:|"]
    for name in recipes:
        r = res[name]
        lines.append(f"| {name} | {', '.join(f'{v:.2f}' for v in r['R1'])} | {r['mean']:.2f} | "
                     f"{r['std']:.2f} | {r['seconds']:.0f} |")
    lines.append(f"\n{res['seeds']} seeds, {res['steps']} steps each; synthetic RegDB, 120 "
                 "training / 40 test identities, trial 1, visible -> thermal.")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/bench_recipes.py``."""
    parser = Parser(
        prog="tools/bench_recipes.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/bench_recipes.py --recipes deen/regdb agw/regdb --seeds 2",
            "python tools/bench_recipes.py --recipes mscmnet/regdb agw/regdb --seeds 2",
            "python tools/bench_recipes.py --recipes deen/regdb --set TRAIN.STEPS '20, 50' "
            "--set TRAIN.MAX_EPOCHS 81",
        ])
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--set", nargs=2, action="append", default=[],
                        metavar=("KEY", "VALUE"),
                        help="change every recipe before the reduction (repeatable)")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    res = compare(args.recipes, args.seeds, args.steps, [v for kv in args.set for v in kv])
    print(markdown(res, args.recipes))
    return 0


if __name__ == "__main__":
    main()
