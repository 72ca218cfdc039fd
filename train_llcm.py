"""Train on LLCM, then test the selected model in both directions (IR->VIS, VIS->IR).

    python train_llcm.py --config CONFIG.ini [--resume [PATH]] [KEY VALUE ...]
"""
from functools import partial

from engine.launch import train_main
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(partial(train_main, "train_llcm.py", "llcm"))()
