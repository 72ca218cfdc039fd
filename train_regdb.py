"""Train on RegDB, one model per trial, and test each on its trial in both directions.

``python train_regdb.py --help`` lists examples.
"""
import argparse
from functools import partial

from engine.launch import script_parser, train_main
from utils.errors import cli_entry

EXAMPLES = (
    "python train_regdb.py --config configs/agw/regdb.ini DATA.ROOT /data/RegDB",
    "python train_regdb.py --config configs/agw/regdb.ini DATA.ROOT /data/RegDB --trial all",
    "python train_regdb.py --config configs/agw/regdb.ini --trial 3 --resume TRAIN.MAX_EPOCHS 100",
)


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (also read by the documentation checks)."""
    return script_parser("train_regdb.py", 'regdb', EXAMPLES)


if __name__ == "__main__":
    cli_entry(partial(train_main, "train_regdb.py", 'regdb', examples=EXAMPLES))()
