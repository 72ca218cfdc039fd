"""Train and test loaders yielding dict batches.

Every batch is ``{'img': (B, 3, H, W) float, 'pid': (B,) long, 'cam': (B,) long,
'modality': (B,) long, 'index': (B,) long}``, ``index`` being the record's
position in the list the loader was built on; training batches also hold
``'part': (B,) long``, ``PART_COPY`` for the extra copies of visible and
infrared images (DATA.VISIBLE_COPY, DATA.INFRARED_COPY), else ``PART_PLAIN``.
Workers pass uint8 images; the loader normalises each batch (and applies the
float augmentations) where it arrives: in this process, or on ``device`` when
one is given, so that only uint8 pixels cross process boundaries and the PCIe bus.

A worker loads a whole batch per request (the image sets are indexed by a list
of keys) and returns it already stacked: one uint8 tensor in shared memory and
the labels as small NumPy arrays, which travel inside the message. Passing a
batch between processes thus shares one block of memory instead of one per
field, and no per-sample dicts are collated.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    SequentialSampler,
    default_collate,
)
from yacs.config import CfgNode

from data.base import ImageRecord, VIReIDDataset
from data.cache import DecodedStore, cache_folder, open_store
from data.sampler import CrossModalityIdentitySampler
from data.transforms import PART_COPY, PART_PLAIN, EvalTransform, TrainTransform, load_image
from utils.constants import VISIBLE
from utils.errors import UserError


def sample_seeds(seed: int, epoch: int, rank: int, step: int, n: int,
                 part: int = PART_PLAIN) -> list[int]:
    """The augmentation seeds of the ``n`` samples of one part of a training batch.

    Each part draws from its own stream, so adding copies leaves the seeds of
    the plain images as they are.
    """
    entropy = [seed, epoch, rank, step] + ([part] if part != PART_PLAIN else [])
    return np.random.SeedSequence(entropy).generate_state(n, dtype=np.uint64).tolist()


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """(B, 3, H, W) uint8 batch of (3, H, W) images; in shared memory inside a loader worker,
    so that handing it to the main process copies nothing."""
    return default_collate(list(images))


def _labels(records: Sequence[ImageRecord], indices: Sequence[int]) -> dict[str, np.ndarray]:
    """(B,) int64 ``pid``, ``cam``, ``modality`` and ``index`` of a batch's records."""
    rows = [(records[i].pid, records[i].cam, records[i].modality, i) for i in indices]
    table = np.array(rows, dtype=np.int64).reshape(len(rows), 4)
    return {name: np.ascontiguousarray(table[:, j])
            for j, name in enumerate(("pid", "cam", "modality", "index"))}


def _keep(batch: dict[str, Any]) -> dict[str, Any]:
    """The loader's collate function: a batch arrives already stacked."""
    return batch


class TrainImageSet(Dataset):
    """Training images; ``dataset[keys]`` loads one batch, key ``(index, sample_seed, part)``
    augmenting record ``index`` with that seed, as the given part (PART_PLAIN or PART_COPY).

    A batch holds the uint8 half of the augmentation: ``img`` (B, 3, H, W) uint8
    and ``aug`` (B, 5) int64 parameters, with the labels ``pid``, ``cam``,
    ``modality``, ``index`` and ``part`` as (B,) int64 arrays;
    ``TrainTransform.finish`` completes it.

    Args:
        records: training records.
        transform: the training transform.
        store: decoded cache of ``records`` at SIZE_TRAIN, or None to decode files.
        resize: resize filter when decoding files (``data.transforms.RESIZE_FILTERS``).
    """

    def __init__(self, records: Sequence[ImageRecord], transform: TrainTransform,
                 store: DecodedStore | None = None, resize: str = "bilinear") -> None:
        self.records = list(records)
        self.transform = transform
        self.store = store
        self.resize = resize

    def __len__(self) -> int:
        return len(self.records)

    def image(self, index: int) -> np.ndarray:
        """(H, W, 3) uint8 image of record ``index`` at SIZE_TRAIN."""
        if self.store is not None:
            return self.store[index]
        return load_image(self.records[index].path, self.transform.size, self.resize)

    def __getitem__(self, keys: Sequence[tuple[int, int, int]]) -> dict[str, Any]:
        images, params = [], []
        for index, sample_seed, part in keys:
            rng = np.random.default_rng(sample_seed)
            img, aug = self.transform.sample(self.image(index), self.records[index].modality,
                                             rng, part)
            images.append(img)
            params.append(aug.numpy())
        indices = [k[0] for k in keys]
        return {"img": stack_images(images), "aug": np.stack(params),
                **_labels(self.records, indices),
                "part": np.array([k[2] for k in keys], dtype=np.int64)}


class EvalImageSet(Dataset):
    """Test images in record order, resized to SIZE_TEST with ``resize``; ``dataset[indices]``
    loads one batch: ``img`` (B, 3, H, W) uint8 and the labels as (B,) int64 arrays."""

    def __init__(self, records: Sequence[ImageRecord], size: tuple[int, int],
                 transform: EvalTransform, store: DecodedStore | None = None,
                 resize: str = "bilinear") -> None:
        self.records = list(records)
        self.size = size
        self.transform = transform
        self.store = store
        self.resize = resize

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, indices: Sequence[int]) -> dict[str, Any]:
        images = []
        for index in indices:
            raw = self.store[index] if self.store is not None \
                else load_image(self.records[index].path, self.size, self.resize)
            images.append(self.transform.sample(raw))
        return {"img": stack_images(images), **_labels(self.records, indices)}


class SeededBatches:
    """Turns the sampler's batches into ``(index, seed, part)`` keys of ``TrainImageSet``.

    The seed depends on (seed, epoch, rank, step, part, position), never on the
    worker that loads the sample, so augmentations are reproducible and
    resumable. With ``modalities`` (CAJ's joint batch) each batch becomes its
    visible images, a PART_COPY of each of them in the same order, then its
    infrared images; with ``infrared_copy`` too (MSCMNet's 2-view batch) a
    PART_COPY of each infrared image follows them: V1, V2, I1, I2. Without
    ``modalities``, the sampler's batch as it is.

    Args:
        sampler: the training sampler.
        modalities: modality of every record the sampler indexes, to add the
            copies; None = no copies.
        visible_copy: add the visible copies.
        infrared_copy: add the infrared copies (their seeds continue the copies'
            stream after the visible ones, so these keep theirs).
    """

    def __init__(self, sampler: CrossModalityIdentitySampler,
                 modalities: Sequence[int] | None = None, visible_copy: bool = True,
                 infrared_copy: bool = False) -> None:
        self.sampler = sampler
        self.modalities = modalities
        self.visible_copy, self.infrared_copy = visible_copy, infrared_copy

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        s = self.sampler
        for step, batch in enumerate(iter(s), start=s.start):
            seeds = sample_seeds(s.seed, s.epoch, s.rank, step, len(batch))
            keys = [(index, seed, PART_PLAIN) for index, seed in zip(batch, seeds)]
            if self.modalities is None:
                yield keys
                continue
            visible = [k for k in keys if self.modalities[k[0]] == VISIBLE]
            infrared = [k for k in keys if self.modalities[k[0]] != VISIBLE]
            copy_seeds = sample_seeds(s.seed, s.epoch, s.rank, step,
                                      len(visible) + len(infrared), PART_COPY)
            copies = [(index, seed, PART_COPY) for (index, _, _), seed in zip(visible, copy_seeds)]
            ir_copies = [(index, seed, PART_COPY) for (index, _, _), seed
                         in zip(infrared, copy_seeds[len(visible):])]
            yield ((visible + copies if self.visible_copy else visible) + infrared
                   + (ir_copies if self.infrared_copy else []))


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
                      cfg.DATA.DATASET_NAME.lower(), split, verbose=verbose,
                      resize=cfg.DATA.RESIZE)


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
        batch = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
                 for k, v in batch.items()}
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
        (loader, sampler); batches hold 2 * P * K images (TRAIN_BATCH_SIZE per rank),
        3 * P * K with DATA.VISIBLE_COPY or DATA.INFRARED_COPY, 4 * P * K with both
        (the sampler still draws 2 * P * K records).
    """
    if not dataset.train:
        raise UserError(f"{dataset.title()}: no training images (dataset read without them?)")
    sampler = CrossModalityIdentitySampler(
        dataset.train, cfg.DATA.TRAIN_BATCH_SIZE, cfg.DATA.SAMPLE_ID_INSTANCE,
        seed=cfg.TRAIN.SEED, iters_per_epoch=cfg.TRAIN.ITERS_PER_EPOCH,
        rank=rank, world_size=world_size)
    transform = TrainTransform(cfg)
    store = _store(cfg, dataset.train, transform.size, "train", verbose)
    images = TrainImageSet(dataset.train, transform, store, cfg.DATA.RESIZE)
    copies = cfg.DATA.VISIBLE_COPY or cfg.DATA.INFRARED_COPY
    modalities = [r.modality for r in dataset.train] if copies else None
    device = None if device is None else torch.device(device)
    batches = SeededBatches(sampler, modalities, cfg.DATA.VISIBLE_COPY, cfg.DATA.INFRARED_COPY)
    loader = VIReIDLoader(images, _Finish(transform, device), sampler=batches, batch_size=None,
                          collate_fn=_keep, **_loader_kwargs(cfg, device))
    return loader, sampler


def make_test_loader(cfg: CfgNode, records: Sequence[ImageRecord], split: str = "test",
                     verbose: bool = True, device: torch.device | str | None = None
                     ) -> DataLoader:
    """Feature-extraction loader over ``records`` in their order.

    Args:
        cfg: the configuration (DATA.SIZE_TEST, RESIZE, TEST_BATCH_SIZE, NUM_WORKERS, CACHE).
        records: images to load.
        split: name of the record list in the decoded cache's file name.
        verbose: print a line when the decoded cache is built.
        device: where batches are normalised and ``img`` is delivered; None = CPU.
    """
    if not records:
        raise UserError(f"no images to load for the {split} split")
    size = tuple(cfg.DATA.SIZE_TEST)
    store = _store(cfg, records, size, split, verbose)
    transform = EvalTransform(cfg)
    images = EvalImageSet(records, size, transform, store, cfg.DATA.RESIZE)
    device = None if device is None else torch.device(device)
    batches = BatchSampler(SequentialSampler(range(len(records))), cfg.DATA.TEST_BATCH_SIZE,
                           drop_last=False)
    return VIReIDLoader(images, _Finish(transform, device), sampler=batches, batch_size=None,
                        collate_fn=_keep, **_loader_kwargs(cfg, device))
