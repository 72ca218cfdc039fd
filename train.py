"""Train on any registered dataset (DATA.DATASET_NAME), then test with its protocol.

    python train.py --config CONFIG.ini [--trial N|N,M|all] [--resume [PATH]] [KEY VALUE ...]
    torchrun --nproc_per_node=N train.py --config ...

``--trial`` applies to datasets in fixed train/test splits (RegDB): one model
per split. ``train_regdb.py``, ``train_sysumm.py`` and ``train_llcm.py`` are
this script with a check of the config's dataset.
"""
from functools import partial

from engine.launch import train_main
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(partial(train_main, "train.py", None))()
