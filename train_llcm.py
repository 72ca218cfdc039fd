"""Train on LLCM, then test the selected model in both directions (IR->VIS, VIS->IR).

    python train_llcm.py --config CONFIG.ini [--resume [PATH]] [KEY VALUE ...]
"""
from engine.launch import main_llcm
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(main_llcm)()
