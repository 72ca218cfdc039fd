"""Plot the training curves of a run folder: python tools/plot_training.py RUN_DIR [-o OUT.png]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.cli import Parser  # noqa: E402
from utils.errors import cli_entry  # noqa: E402
from utils.visualize import training_curves  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/plot_training.py``."""
    parser = Parser(
        prog="tools/plot_training.py",
        description="Plot loss terms, learning rate and evaluation figures from "
                    "RUN_DIR/metrics.jsonl.",
        examples=[
            "python tools/plot_training.py output/demo/run",
            "python tools/plot_training.py output/agw_regdb/trial_1 -o curves.png",
        ])
    parser.add_argument("run_dir", help="training run folder (holds metrics.jsonl)")
    parser.add_argument("-o", "--output", help="PNG to write (default RUN_DIR/training_curves.png)")
    return parser


@cli_entry
def main() -> int:
    args = build_parser().parse_args()
    print(training_curves(args.run_dir, args.output))
    return 0


if __name__ == "__main__":
    main()
