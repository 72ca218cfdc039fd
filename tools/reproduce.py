"""Train and test a recipe over several seeds (and RegDB split trials), then write a report.

    python tools/reproduce.py RECIPE.ini --seeds N [--trial N|N,M|all] [KEY VALUE ...]

Runs go to TRAIN.OUTPUT_PATH/seed_<s>/ (trial_<t>/ inside for RegDB);
report.md and report.json go to TRAIN.OUTPUT_PATH. A finished run is kept,
so a rerun only trains what is missing. See docs/reproducing.md.
"""
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.reproduce import build_parser, reproduce_main  # noqa: E402, F401
from utils.errors import cli_entry  # noqa: E402

if __name__ == "__main__":
    cli_entry(reproduce_main)()
