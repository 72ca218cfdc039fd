"""Dataset readers (RegDB, SYSU-MM01, LLCM), sampler, augmentations and loaders."""
from __future__ import annotations

from yacs.config import CfgNode

from data.base import ImageRecord, VIReIDDataset
from data.llcm import LLCM
from data.regdb import RegDB
from data.sysu import SYSUMM01
from utils.config import dataset_root
from utils.errors import UserError

DATASETS: dict[str, type[VIReIDDataset]] = {"regdb": RegDB, "sysumm": SYSUMM01, "llcm": LLCM}

__all__ = ["DATASETS", "LLCM", "SYSUMM01", "ImageRecord", "RegDB", "VIReIDDataset",
           "build_dataset"]


def build_dataset(cfg: CfgNode, verbose: bool = True, need_train: bool = True) -> VIReIDDataset:
    """Read the dataset named by ``cfg.DATA.DATASET_NAME`` at ``utils.config.dataset_root(cfg)``.

    Args:
        cfg: the configuration.
        verbose: print the statistics table.
        need_train: False for test-only use: the training lists are neither read
            nor checked (``train`` is empty, ``num_classes`` 0).

    Raises:
        UserError: unknown dataset name (listing the valid ones) or any problem
            with the dataset's files.
    """
    name = cfg.DATA.DATASET_NAME.lower()
    if name not in DATASETS:
        raise UserError(f"DATA.DATASET_NAME = {cfg.DATA.DATASET_NAME!r} is not a known dataset; "
                        f"valid names: {', '.join(DATASETS)}")
    return DATASETS[name](dataset_root(cfg), cfg, verbose=verbose, need_train=need_train)
