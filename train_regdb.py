"""Train on RegDB, one model per trial, and test each on its trial in both directions.

    python train_regdb.py --config configs/res50/regdb.ini [--trial N|N,M|all]
        [--resume [PATH]] [KEY VALUE ...]
"""
from functools import partial

from engine.launch import train_main
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(partial(train_main, "train_regdb.py", "regdb"))()
