"""Train on any registered dataset (DATA.DATASET_NAME), then test with its protocol.

``--trial`` applies to datasets in fixed train/test splits (RegDB): one model
per split. ``train_regdb.py``, ``train_sysumm.py`` and ``train_llcm.py`` are
this script with a check of the config's dataset. ``python train.py --help``
lists examples.
"""
import argparse
from functools import partial

from engine.launch import script_parser, train_main
from utils.errors import cli_entry

EXAMPLES = (
    "python train.py --config configs/caj/llcm.ini DATA.ROOT /data/LLCM",
    "python train.py --config configs/agw/llcm.ini DATA.ROOT /data/LLCM DATA.VAL_IDS "
    "40 TRAIN.SELECT val",
    "python train.py --config configs/agw/regdb.ini DATA.ROOT /data/RegDB --trial 1,2",
    "torchrun --nproc_per_node=4 train.py --config configs/agw/sysumm.ini TRAIN.SYNC_BN yes",
)


def build_parser() -> argparse.ArgumentParser:
    """The script's command line (also read by the documentation checks)."""
    return script_parser("train.py", None, EXAMPLES)


if __name__ == "__main__":
    cli_entry(partial(train_main, "train.py", None, examples=EXAMPLES))()
