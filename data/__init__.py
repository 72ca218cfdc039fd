"""Dataset readers, sampler, augmentations and loaders.

Every module of this package is imported here, so a dataset reader in a new
file (a ``VIReIDDataset`` subclass decorated with ``@register_dataset(name)``)
is registered in ``DATASETS`` by its presence alone.
"""
from __future__ import annotations

import importlib
import pkgutil

from yacs.config import CfgNode

from data.base import DATASETS, ImageRecord, VIReIDDataset, register_dataset
from utils.config import dataset_root

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["DATASETS", "ImageRecord", "VIReIDDataset", "build_dataset", "register_dataset"]


def build_dataset(cfg: CfgNode, verbose: bool = True, need_train: bool = True) -> VIReIDDataset:
    """Read the dataset named by ``cfg.DATA.DATASET_NAME`` at ``utils.config.dataset_root(cfg)``.

    Args:
        cfg: the configuration.
        verbose: print the statistics table.
        need_train: False for test-only use: the training lists are neither read
            nor checked (``train`` is empty, ``num_classes`` 0).

    Raises:
        UserError: an unknown dataset name (listing the valid ones) or any problem
            with the dataset's files.
    """
    return DATASETS[cfg.DATA.DATASET_NAME](dataset_root(cfg), cfg, verbose=verbose,
                                           need_train=need_train)
