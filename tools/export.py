"""Export a trained model to ONNX or TorchScript and check the file against PyTorch.

    python tools/export.py --model_path M --format onnx|torchscript --out FILE
        [--batch dynamic|N]

The exported model maps images (B, 3, H, W) float32, normalised with the
checkpoint's mean and std at DATA.SIZE_TEST, and modality (B,) int64 (0 visible,
1 infrared) to the test feature (B, D) (TEST.FLIP included). The file is run
(onnxruntime / torch.jit.load) next to PyTorch on a random batch of both
modalities; the export fails when they differ by more than 1e-4.
ONNX needs the packages of requirements-export.txt.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from engine.deploy import load_trained  # noqa: E402
from engine.export import FORMATS, export_model, require_onnx  # noqa: E402
from utils.cli import Parser  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402

EXAMPLES = [
    "python tools/export.py --model-path output/agw_regdb/trial_1/last.pth --format onnx "
    "--out agw_regdb.onnx",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/export.py``."""
    p = Parser(prog="tools/export.py", description=__doc__.splitlines()[0], examples=EXAMPLES)
    p.add_argument("--model-path", required=True,
                   help="a checkpoint of this project (.pth)")
    p.add_argument("--format", required=True, help=" or ".join(FORMATS))
    p.add_argument("--out", required=True, help="the file to write")
    p.add_argument("--batch", default="dynamic",
                   help="dynamic (default: any batch size) or a fixed batch size")
    return p


def parse_batch(text: str) -> int | None:
    """``dynamic`` -> None, ``"8"`` -> 8.

    Raises:
        UserError: anything else.
    """
    if text.strip().lower() == "dynamic":
        return None
    if not text.strip().isdigit() or int(text) < 1:
        raise UserError(f"--batch {text}: expected dynamic or a batch size >= 1")
    return int(text)


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    fmt = args.format.strip().lower()
    if fmt not in FORMATS:
        raise UserError(f"--format {args.format}: expected {' or '.join(FORMATS)}")
    if fmt == "onnx":
        require_onnx()  # before the model is read: the missing package is the first news
    batch = parse_batch(args.batch)
    trained = load_trained(args.model_path, "cpu")
    report = export_model(trained.cfg, trained.model, args.out, fmt, batch)
    print(f"wrote {report.path} ({report.format}, features of width {report.feature_dim}, "
          f"batch {'dynamic' if batch is None else batch}); max abs difference from PyTorch "
          f"on a batch of {report.batch}: {report.max_abs_diff:.3g}")
    return 0


if __name__ == "__main__":
    main()
