"""Train and test loaders yielding dict batches.

Every batch is ``{'img': (B, 3, H, W) float, 'pid': (B,) long, 'cam': (B,) long,
'modality': (B,) long, 'index': (B,) long}``, ``index`` being the record's
position in the list the loader was built on. Workers pass uint8 images; the
loader normalises each batch (and applies the float augmentations) where it
arrives: in this process, or on ``device`` when one is given, so that only
uint8 pixels cross process boundaries and the PCIe bus.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from yacs.config import CfgNode

from data.base import ImageRecord, VIReIDDataset
from data.cache import DecodedStore, cache_folder, open_store
from data.sampler import CrossModalityIdentitySampler
from data.transforms import EvalTransform, TrainTransform, load_image
from utils.errors import UserError


def sample_seeds(seed: int, epoch: int, rank: int, step: int, n: int) -> list[int]:
    """The augmentation seeds of the ``n`` samples of one training batch."""
    seq = np.random.SeedSequence([seed, epoch, rank, step])
    return seq.generate_state(n, dtype=np.uint64).tolist()


class TrainImageSet(Dataset):
    """Training images; ``dataset[(index, sample_seed)]`` augments with that seed.

    Items hold the uint8 half of the augmentation (``img`` (3, H, W) uint8 and
    its ``aug`` parameters); ``TrainTransform.finish`` completes a batch.

    Args:
        records: training records.
        transform: the training transform.
        store: decoded cache of ``records`` at SIZE_TRAIN, or None to decode files.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: TrainTransform,
                 store: DecodedStore | None = None) -> None:
        self.records = list(records)
        self.transform = transform
        self.store = store

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of record ``index`` at SIZE_TRAIN."""
        if self.store is not None:
            return self.store[index]
        return load_image(self.records[index].path, self.transform.size)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        index, sample_seed = key
        rec = self.records[index]
        rng = np.random.default_rng(sample_seed)
        img, params = self.transform.sample(self.image(index), rec.modality, rng)
        return {"img": img, "aug": params, "pid": rec.pid, "cam": rec.cam,
                "modality": rec.modality, "index": index}


class EvalImageSet(Dataset):
    """Test images in record order, resized to SIZE_TEST; ``img`` (3, H, W) uint8."""

    def __init__(self, records: Sequence[ImageRecord], size: tuple[int, int],
                 transform: EvalTransform, store: DecodedStore | None = None) -> None:
        self.records = list(records)
        self.size = size
        self.transform = transform
        self.store = store

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        raw = self.store[index] if self.store is not None else load_image(rec.path, self.size)
        return {"img": self.transform.sample(raw), "pid": rec.pid, "cam": rec.cam,
                "modality": rec.modality, "index": index}


class SeededBatches:
    """Pairs every index of the sampler's batches with its augmentation seed.

    The seed depends on (seed, epoch, rank, step, position), never on the worker
    that loads the sample, so augmentations are reproducible and resumable.
    """

    def __init__(self, sampler: CrossModalityIdentitySampler) -> None:
        self.sampler = sampler

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        s = self.sampler
        for step, batch in enumerate(iter(s), start=s.start):
            seeds = sample_seeds(s.seed, s.epoch, s.rank, step, len(batch))
            yield list(zip(batch, seeds))


class VIReIDLoader(DataLoader):
    """DataLoader that completes each batch with ``finish`` and re-raises a worker's
    UserError with its original one-line message."""

    def __init__(self, dataset: Dataset, finish: Callable[[dict], dict], **kwargs: Any) -> None:
        self.finish = finish
        super().__init__(dataset, **kwargs)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        try:
            for batch in super().__iter__():
                yield self.finish(batch)
        except UserError as exc:
            msg = str(exc)
            if "Original Traceback" in msg:  # raised in a worker: keep the user-facing line
                last = msg.strip().splitlines()[-1]
                msg = last.split("UserError: ", 1)[-1]
            raise UserError(msg) from None


def _store(cfg: CfgNode, records: Sequence[ImageRecord], size: tuple[int, int], split: str,
           verbose: bool) -> DecodedStore | None:
    if not cfg.DATA.CACHE:
        return None
    return open_store([r.path for r in records], size, cache_folder(cfg),
                      cfg.DATA.DATASET_NAME.lower(), split, verbose=verbose)


def _loader_kwargs(cfg: CfgNode, device: torch.device | None) -> dict[str, Any]:
    workers = cfg.DATA.NUM_WORKERS
    return {"num_workers": workers, "pin_memory": device is not None and device.type == "cuda",
            "persistent_workers": workers > 0}


class _Finish:
    """Moves a collated batch's uint8 images to ``device`` and completes the transform."""

    def __init__(self, transform: TrainTransform | EvalTransform,
                 device: torch.device | None) -> None:
        self.transform, self.device = transform, device

    def __call__(self, batch: dict) -> dict:
        imgs = batch["img"]
        if self.device is not None:
            imgs = imgs.to(self.device, non_blocking=True)
        params = (batch.pop("aug"),) if "aug" in batch else ()
        batch["img"] = self.transform.finish(imgs, *params)
        return batch


def make_train_loader(cfg: CfgNode, dataset: VIReIDDataset, rank: int | None = None,
                      world_size: int | None = None, verbose: bool = True,
                      device: torch.device | str | None = None
                      ) -> tuple[DataLoader, CrossModalityIdentitySampler]:
    """Training loader over ``dataset.train`` and its sampler.

    Call ``sampler.set_epoch(e)`` before iterating each epoch (and
    ``sampler.set_start(i)`` to resume in its middle); ``len(loader)`` follows.

    Args:
        cfg: the configuration (DATA.* and TRAIN.SEED, TRAIN.ITERS_PER_EPOCH).
        dataset: a reader built with its training set.
        rank, world_size: None = from ``torch.distributed`` when initialised.
        verbose: print a line when the decoded cache is built.
        device: where batches are normalised and ``img`` is delivered (pinned
            transfer for CUDA); None = this process's CPU.

    Returns:
        (loader, sampler); batches hold 2 * P * K images (TRAIN_BATCH_SIZE per rank).
    """
    if not dataset.train:
        raise UserError(f"{dataset.title()}: no training images (dataset read without them?)")
    sampler = CrossModalityIdentitySampler(
        dataset.train, cfg.DATA.TRAIN_BATCH_SIZE, cfg.DATA.SAMPLE_ID_INSTANCE,
        seed=cfg.TRAIN.SEED, iters_per_epoch=cfg.TRAIN.ITERS_PER_EPOCH,
        rank=rank, world_size=world_size)
    transform = TrainTransform(cfg)
    store = _store(cfg, dataset.train, transform.size, "train", verbose)
    images = TrainImageSet(dataset.train, transform, store)
    device = None if device is None else torch.device(device)
    loader = VIReIDLoader(images, _Finish(transform, device),
                          batch_sampler=SeededBatches(sampler), **_loader_kwargs(cfg, device))
    return loader, sampler


def make_test_loader(cfg: CfgNode, records: Sequence[ImageRecord], flip: bool = False,
                     split: str = "test", verbose: bool = True,
                     device: torch.device | str | None = None) -> DataLoader:
    """Feature-extraction loader over ``records`` in their order.

    Args:
        cfg: the configuration (DATA.SIZE_TEST, TEST_BATCH_SIZE, NUM_WORKERS, CACHE).
        records: images to load.
        flip: mirror every image (test-time augmentation).
        split: name of the record list in the decoded cache's file name.
        verbose: print a line when the decoded cache is built.
        device: where batches are normalised and ``img`` is delivered; None = CPU.
    """
    if not records:
        raise UserError(f"no images to load for the {split} split")
    size = tuple(cfg.DATA.SIZE_TEST)
    store = _store(cfg, records, size, split, verbose)
    transform = EvalTransform(cfg, flip)
    images = EvalImageSet(records, size, transform, store)
    device = None if device is None else torch.device(device)
    return VIReIDLoader(images, _Finish(transform, device),
                        batch_size=cfg.DATA.TEST_BATCH_SIZE, shuffle=False,
                        **_loader_kwargs(cfg, device))
