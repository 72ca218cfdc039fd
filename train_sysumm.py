"""Train on SYSU-MM01, then test the selected model with the full SYSU protocol.

``python train_sysumm.py --help`` lists examples.
"""
import argparse
from functools import partial

from engine.launch import script_parser, train_main
from utils.errors import cli_entry

EXAMPLES = (
    "python train_sysumm.py --config configs/agw/sysumm.ini DATA.ROOT /data/SYSU-MM01",
    "python train_sysumm.py --config configs/deen/sysumm.ini DATA.ROOT /data/SYSU-MM01 --resume",
    "torchrun --nproc_per_node=4 train_sysumm.py --config configs/agw/sysumm.ini TRAIN.SYNC_BN yes",
)


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (also read by the documentation checks)."""
    return script_parser("train_sysumm.py", 'sysumm', EXAMPLES)


if __name__ == "__main__":
    cli_entry(partial(train_main, "train_sysumm.py", 'sysumm', examples=EXAMPLES))()
