"""Train on SYSU-MM01, then test the selected model with the full SYSU protocol.

    python train_sysumm.py --config configs/res50_sysumm_all.ini [--resume [PATH]] [KEY VALUE ...]
    torchrun --nproc_per_node=N train_sysumm.py --config ...
"""
from engine.launch import main_sysumm
from utils.errors import cli_entry

if __name__ == "__main__":
    cli_entry(main_sysumm)()
