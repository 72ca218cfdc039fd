"""Extract the test features of a folder of images with a trained model (.npz).

    python tools/extract.py --model_path M --images DIR [DIR ...] --modality visible|infrared
        --out feats.npz [--device cpu|cuda|auto]

The file has the layout of ``test.py --save_features`` for one set named after
the modality: <set>_feat (N, D), <set>_path, <set>_pid (-1), <set>_cam (0), and
the checkpoint's identity: checkpoint, model_sha256, config.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.deploy import (  # noqa: E402
    check_writable_dir,
    collect_images,
    extract,
    load_trained,
    modality_id,
)
from utils.cli import Parser  # noqa: E402
from utils.errors import cli_entry  # noqa: E402

EXAMPLES = [
    "python tools/extract.py --model-path output/agw_sysumm/last.pth --images crops/ir "
    "--modality infrared --out ir_feats.npz",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/extract.py``."""
    p = Parser(prog="tools/extract.py", description=__doc__.splitlines()[0], examples=EXAMPLES)
    p.add_argument("--model-path", required=True,
                   help="a checkpoint of this project (.pth)")
    p.add_argument("--images", nargs="+", required=True, help="images, folders or globs")
    p.add_argument("--modality", required=True, help="visible or infrared")
    p.add_argument("--out", required=True, help="the .npz file to write")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (default: MODEL.DEVICE)")
    return p


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    modality = modality_id(args.modality, "--modality")
    paths = collect_images(args.images, "--images")
    check_writable_dir(Path(args.out).parent, "--out")
    trained = load_trained(args.model_path, args.device)
    arrays = extract(trained, paths, modality, args.out)
    feat = next(v for k, v in arrays.items() if k.endswith("_feat"))
    print(f"{feat.shape[0]} features of width {feat.shape[1]} written to {args.out}")
    return 0


if __name__ == "__main__":
    main()
