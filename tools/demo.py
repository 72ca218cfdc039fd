"""The demo behind ``make demo``: synthetic RegDB, train, test both directions, draw.

    python tools/demo.py [--out output/demo] [--train-ids 400] [--test-ids 80] [--images 10]
                         [KEY VALUE ...]

Generates a RegDB-layout dataset of procedurally drawn people (visible and
thermal), trains ``configs/demo_synthetic.ini`` (a two-stream ResNet-18) on
the CPU, evaluates the untrained and the trained model with the RegDB
protocol (trial 1, visible->thermal and thermal->visible), prints both, and
writes a ranked-results sheet, the CMC curves and the training curves; then
searches the thermal test images for three visible test queries with the
trained checkpoint, as ``tools/search.py`` does, and writes their ranked sheets.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import data  # noqa: E402
from engine.checkpoint import load_checkpoint  # noqa: E402
from engine.deploy import load_trained, search  # noqa: E402
from engine.distributed import init_distributed, shutdown_distributed  # noqa: E402
from engine.evaluate import run_evaluation  # noqa: E402
from engine.launch import train_and_test  # noqa: E402
from engine.runtime import seed_everything  # noqa: E402
from engine.tester import load_model  # noqa: E402
from engine.visual import write_pictures  # noqa: E402
from modeling import build_model  # noqa: E402
from tools.make_synthetic_data import make_regdb  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.config import load_config  # noqa: E402
from utils.constants import INFRARED, VISIBLE  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402
from utils.io import atomic_write_text  # noqa: E402
from utils.visualize import training_curves  # noqa: E402

CONFIG = REPO / "configs" / "demo_synthetic.ini"
DIRECTIONS = ("visible-to-thermal", "thermal-to-visible")
STAMP = "demo_dataset.json"  # the drawing settings, in the dataset folder
BAR_R1 = 80.0  # % R1 visible->thermal the trained demo model must reach


def evaluate_with_pictures(cfg, model, dataset, device, pictures: Path | None
                           ) -> dict[str, Any]:
    """The RegDB protocol on ``model``; with ``pictures``, also its CMC curves, ranked
    sheets and modality-gap pictures."""
    ev = run_evaluation(cfg, model.eval(), dataset, device=device)
    if pictures is not None:
        write_pictures(cfg, ev, pictures)
    return ev.results


def prepare_dataset(root: Path, num_ids: int, images: int, image_size: tuple[int, int],
                    num_train: int | None) -> Path:
    """The demo's dataset at ``root``: reused when drawn with the same settings, else redrawn.

    The settings are kept in ``root/demo_dataset.json``. Only a folder carrying
    that file (one the demo drew) is ever replaced; any other existing folder is
    refused. The data is drawn into ``<root>.partial`` and renamed when complete,
    so an interrupted run leaves nothing half-drawn at ``root``.
    """
    num_train = num_ids // 2 if num_train is None else num_train
    settings = {"num_ids": num_ids, "num_train": num_train, "images_per_id": images,
                "size": list(image_size), "seed": 0}
    stamp = root / STAMP
    if stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == settings:
                return root
        except (OSError, ValueError):
            pass  # an unreadable stamp: still the demo's folder, drawn again below
    elif root.exists():
        raise UserError(f"{root} exists but has no {STAMP}, so the demo did not draw it: "
                        f"remove it (make clean-demo removes output/demo) or choose another --out")
    partial = root.with_name(root.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)  # an interrupted earlier drawing
    print(f"generating a synthetic RegDB-layout dataset ({num_train} training + "
          f"{num_ids - num_train} test ids x {images} visible + {images} thermal images) "
          f"in {root}")
    make_regdb(partial, num_ids=num_ids, images_per_id=images, size=image_size, seed=0,
               num_train=num_train)
    atomic_write_text(partial / STAMP, json.dumps(settings))
    if root.exists():
        print(f"{root} was drawn with other settings: replacing it")
        shutil.rmtree(root)
    partial.rename(root)
    return root


def demo_search(model_path: Path, dataset, out: Path, num_queries: int = 3
                ) -> dict[str, Any]:
    """``tools/search.py`` on the trained checkpoint: the first visible image of
    ``num_queries`` test identities spread over the test set against every thermal test
    image; writes a ranked sheet per query and ranking.json to ``out``.

    Returns:
        ``{'queries': int, 'top1_same': int (queries whose first match is the same person),
        'gallery': int, 'sheets': [Path], 'out': Path}``
    """
    visible, thermal = dataset.test_sets["visible"], dataset.test_sets["infrared"]
    firsts: dict[int, str] = {}
    for r in visible:
        firsts.setdefault(r.pid, r.path)
    pids = sorted(firsts)
    picked = [pids[round(i * (len(pids) - 1) / max(num_queries - 1, 1))]
              for i in range(min(num_queries, len(pids)))]
    pid_of = {r.path: r.pid for r in thermal}
    result = search(load_trained(str(model_path)), [firsts[p] for p in picked],
                    [r.path for r in thermal], VISIBLE, INFRARED, out, top=10)
    top1 = [q["top"][0]["path"] for q in result.ranking["queries"]]
    return {"queries": len(picked), "gallery": len(thermal), "sheets": result.sheets,
            "top1_same": sum(pid_of[t] == p for t, p in zip(top1, picked)), "out": out}


def run_demo(out: Path, num_ids: int, images: int, overrides: list[str],
             image_size: tuple[int, int] = (128, 64), num_train: int | None = None
             ) -> dict[str, Any]:
    """Generate, train, evaluate and draw; return the figures (percent).

    Returns:
        ``{'untrained': {direction: mean figures}, 'trained': {...}, 'chance': float,
        'run_dir': Path, 'pictures': Path, 'search': demo_search's dict, 'seconds': float}``
    """
    start = time.time()
    root = prepare_dataset(out / "RegDB", num_ids, images, image_size, num_train)
    run_dir, pictures = out / "run", out / "pictures"
    cfg = load_config(CONFIG, ["DATA.ROOT", str(root), "TRAIN.OUTPUT_PATH", str(run_dir),
                               *overrides])
    info, device = init_distributed(cfg)
    try:
        dataset = data.build_dataset(cfg, verbose=True)
        seed_everything(cfg.TRAIN.SEED)
        untrained_model = build_model(cfg, dataset.num_classes).to(device)
        untrained = evaluate_with_pictures(cfg, untrained_model, dataset, device, None)
        train_and_test(cfg, None, info, device)
        path = run_dir / "last.pth"
        model = load_model(cfg, load_checkpoint(path), str(path)).to(device)
        trained = evaluate_with_pictures(cfg, model, dataset, device, pictures)
        searched = demo_search(path, dataset, out / "search")
    finally:
        shutdown_distributed()
    curves = training_curves(run_dir, pictures / "training_curves.png")
    num_test_ids = len({r.pid for r in dataset.test_sets["visible"]})
    return {
        "untrained": {d: untrained["settings"][d]["mean"] for d in DIRECTIONS},
        "trained": {d: trained["settings"][d]["mean"] for d in DIRECTIONS},
        "chance": 100.0 / num_test_ids, "num_test_ids": num_test_ids,
        "run_dir": run_dir, "pictures": pictures, "curves": curves, "search": searched,
        "seconds": time.time() - start,
    }


def report(res: dict[str, Any]) -> str:
    """The closing table: untrained vs trained, both directions, and chance."""
    lines = ["", f"RegDB protocol, trial 1, {res['num_test_ids']} synthetic test identities "
             f"(chance R1 {res['chance']:.1f}%)", "",
             f"{'direction':<20} {'model':<10} {'R1':>7} {'R10':>7} {'R20':>7} {'mAP':>7} "
             f"{'mINP':>7}"]
    for d in DIRECTIONS:
        for name in ("untrained", "trained"):
            m = res[name][d]
            lines.append(f"{d:<20} {name:<10} {m['R1']:7.2f} {m['R10']:7.2f} {m['R20']:7.2f} "
                         f"{m['mAP']:7.2f} {m['mINP']:7.2f}")
    r1 = res["trained"]["visible-to-thermal"]["R1"]
    verdict = "reached" if r1 >= BAR_R1 else "NOT reached"
    found = res["search"]
    lines += ["", f"search (tools/search.py): {found['queries']} visible queries against "
              f"{found['gallery']} thermal images, first match the same person for "
              f"{found['top1_same']} of {found['queries']}",
              f"bar: R1 visible->thermal >= {BAR_R1:.0f}%: {verdict} ({r1:.2f}%)",
              f"time: {res['seconds'] / 60:.1f} min"]
    return "\n".join(lines)


def next_steps(res: dict[str, Any]) -> str:
    run, pics, found = res["run_dir"], res["pictures"], res["search"]["out"]
    return f"""
outputs:
  {run}/                 config.ini, log.txt, metrics.jsonl, last.pth, results.json, tensorboard/
  {pics}/ranked_visible-to-thermal.png   queries and their top-10 (green = same person)
  {pics}/cmc.png                         CMC curves, both directions
  {pics}/embedding.png                   t-SNE (PCA without scikit-learn) of the test
                                         features: colour = person, marker = modality
  {pics}/distances.png                   same- vs different-person cross-modality distances
  {pics}/training_curves.png             loss terms, learning rate, periodic evaluation
  {found}/ranked_*.png, ranking.json      tools/search.py on three visible test queries

use the trained model on your own images (see README.md, "Use a trained model"):
  python tools/search.py --model_path {run}/last.pth --query QUERY.png \\
      --gallery 'THERMAL_FOLDER/**/*.bmp' --gallery-modality infrared --out {found}
  python tools/export.py --model_path {run}/last.pth --format onnx --out demo.onnx

next, on real data (layouts: docs/datasets.md):
  python train_regdb.py --config configs/agw/regdb.ini DATA.ROOT /data/RegDB --trial all
  python test.py --model-path 'output/agw_regdb/trial_{{trial}}/last.pth' --trial all
  python train_sysumm.py --config configs/agw/sysumm.ini DATA.ROOT /data/SYSU-MM01
  python test.py --model-path output/agw_sysumm/last.pth --output results.json --visualize pics
"""


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/demo.py``."""
    parser = Parser(
        prog="tools/demo.py", description=__doc__.splitlines()[0],
        examples=[
            "python tools/demo.py",
            "python tools/demo.py --train-ids 100 --test-ids 40 --images 6 TRAIN.MAX_EPOCHS 10",
        ])
    parser.add_argument("--out", default=str(REPO / "output" / "demo"),
                        help="folder for the dataset, the run and the pictures")
    parser.add_argument("--train-ids", type=int, default=400, help="training identities")
    parser.add_argument("--test-ids", type=int, default=80, help="test identities")
    parser.add_argument("--images", type=int, default=10,
                        help="images per identity and modality")
    parser.add_argument("overrides", nargs="*", metavar="KEY VALUE",
                        help="overrides of configs/demo_synthetic.ini")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    if min(args.train_ids, args.test_ids, args.images) < 1:
        raise UserError(f"demo sizes: expected --train-ids, --test-ids and --images >= 1, got "
                        f"{args.train_ids}, {args.test_ids}, {args.images}")
    torch.set_num_threads(max(1, torch.get_num_threads()))
    res = run_demo(Path(args.out), args.train_ids + args.test_ids, args.images, args.overrides,
                   num_train=args.train_ids)
    print(report(res))
    print(next_steps(res))
    return 0


if __name__ == "__main__":
    main()
