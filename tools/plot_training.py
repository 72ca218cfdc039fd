"""Plot the training curves of a run folder: python tools/plot_training.py RUN_DIR [-o OUT.png]."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.errors import cli_entry  # noqa: E402
from utils.visualize import training_curves  # noqa: E402


@cli_entry
def main() -> int:
    parser = argparse.ArgumentParser(description="Plot loss terms, learning rate and "
                                     "evaluation figures from RUN_DIR/metrics.jsonl.")
    parser.add_argument("run_dir", help="training run folder (holds metrics.jsonl)")
    parser.add_argument("-o", "--output", help="PNG to write (default RUN_DIR/training_curves.png)")
    args = parser.parse_args()
    print(training_curves(args.run_dir, args.output))
    return 0


if __name__ == "__main__":
    main()
