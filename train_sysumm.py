"""Train on SYSU-MM01, then test the selected model with the full SYSU protocol.

    python train_sysumm.py --config configs/res50/sysumm.ini [--resume [PATH]] [KEY VALUE ...]
    torchrun --nproc_per_node=N train_sysumm.py --config ...
"""
from functools import partial

from engine.launch import train_main
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(partial(train_main, "train_sysumm.py", "sysumm"))()
