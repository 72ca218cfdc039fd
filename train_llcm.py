"""Train on LLCM, then test the selected model in both directions (IR->VIS, VIS->IR).

``python train_llcm.py --help`` lists examples.
"""
import argparse
from functools import partial

from engine.launch import script_parser, train_main
from utils.errors import cli_entry

EXAMPLES = (
    "python train_llcm.py --config configs/agw/llcm.ini DATA.ROOT /data/LLCM",
    "python train_llcm.py --config configs/deen/llcm.ini DATA.ROOT /data/LLCM "
    "TRAIN.SELECT val DATA.VAL_IDS 40",
)


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (also read by the documentation checks)."""
    return script_parser("train_llcm.py", 'llcm', EXAMPLES)


if __name__ == "__main__":
    cli_entry(partial(train_main, "train_llcm.py", 'llcm', examples=EXAMPLES))()
