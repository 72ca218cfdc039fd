"""Cross-modality identity sampler: every batch holds both modalities of each of its identities."""
from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence

import numpy as np
import torch.distributed as dist
from torch.utils.data import Sampler

from data.base import ImageRecord
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError


def _take(rng: np.random.Generator, queue: np.ndarray, pool: np.ndarray, k: int
          ) -> tuple[np.ndarray, np.ndarray]:
    """Take ``k`` distinct items from ``queue``, the rest of the current pass over ``pool``.

    ``pool`` holds at least ``k`` distinct items. When the pass runs out, the
    draw is completed from a new pass (a fresh permutation), skipping the items
    it already holds; those stay in the new pass. Every item thus comes once per
    pass and a draw never repeats an item. Returns (taken, remaining queue).
    """
    if len(queue) >= k:
        return queue[:k], queue[k:]
    fresh = rng.permutation(pool)
    picked = np.flatnonzero(~np.isin(fresh, queue))[:k - len(queue)]
    return np.concatenate([queue, fresh[picked]]), np.delete(fresh, picked)


class CrossModalityIdentitySampler(Sampler[list[int]]):
    """Yields batches of record indices: P identities x (K visible + K infrared).

    A batch is the K visible images of its P identities followed by their K
    infrared images (P = batch_size // (2K)); consumers must read the batch's
    ``modality`` tensor rather than rely on this layout. Identities come round in
    shuffled passes, so all appear equally often; each identity's images of a
    modality also come round in shuffled passes, so a batch repeats an image only
    when that identity has fewer than K images of the modality (all of them,
    then random picks).

    An epoch has ``ceil(max(n_visible, n_infrared) / (P * K * world_size))``
    batches per rank, enough to show the larger modality once over all ranks
    (the field's baselines draw ``floor(N / (P * K)) + 1`` batches), unless
    ``iters_per_epoch`` > 0 sets the count. The batches of an epoch depend only
    on (seed, epoch, rank, world_size): ``set_epoch`` selects the epoch and
    ``set_start(i)`` skips its first i batches without drawing any image, for an
    exact resume. In a distributed run every rank gets its own disjoint share of
    the step's identities, and the same number of steps.

    Args:
        records: training records (both modalities, any pid values).
        batch_size: images per batch on each rank (2 * P * K).
        num_instances: K, images of each modality per identity.
        seed: base seed.
        iters_per_epoch: batches per epoch; 0 = cover the larger modality once.
        rank, world_size: this process's share; None = from ``torch.distributed``
            when it is initialised, else 0 and 1.
    """

    def __init__(self, records: Sequence[ImageRecord], batch_size: int, num_instances: int,
                 seed: int = 0, iters_per_epoch: int = 0, rank: int | None = None,
                 world_size: int | None = None) -> None:
        if world_size is None:
            world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() \
                else 1
        if rank is None:
            rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        k = num_instances
        self.num_ids_per_batch = batch_size // (2 * k)
        if self.num_ids_per_batch < 1 or batch_size % (2 * k):
            raise UserError(f"DATA.TRAIN_BATCH_SIZE = {batch_size} must be a positive multiple "
                            f"of 2 x DATA.SAMPLE_ID_INSTANCE = {2 * k}")
        pools: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, rec in enumerate(records):
            pools[(rec.pid, rec.modality)].append(i)
        both = sorted(p for p, m in pools if m == VISIBLE and (p, INFRARED) in pools)
        self.pids = np.array(both, dtype=np.int64)
        keep = set(both)
        self.pools = {key: np.array(v) for key, v in pools.items() if key[0] in keep}
        need = self.num_ids_per_batch * world_size
        if len(self.pids) < need:
            raise UserError(f"DATA.TRAIN_BATCH_SIZE = {batch_size} needs {need} identities with "
                            f"both modalities per step ({world_size} process(es) x "
                            f"{self.num_ids_per_batch}), the training set has {len(self.pids)}")
        n_vis = sum(len(v) for (_, m), v in self.pools.items() if m == VISIBLE)
        n_ir = sum(len(v) for (_, m), v in self.pools.items() if m == INFRARED)
        self.num_instances = k
        self.batch_size = batch_size
        self.seed = seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = iters_per_epoch or math.ceil(
            max(n_vis, n_ir) / (self.num_ids_per_batch * k * world_size))
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next iteration yields (and start at its first)."""
        self.epoch = epoch
        self.start = 0

    def set_start(self, iteration: int) -> None:
        """Skip the first ``iteration`` batches of this epoch (resume); call after set_epoch."""
        if not 0 <= iteration <= self.batches_per_epoch:
            raise ValueError(f"start iteration {iteration} outside 0..{self.batches_per_epoch}")
        self.start = iteration

    def __len__(self) -> int:
        """Batches the next iteration yields: ``batches_per_epoch`` minus the skipped ones."""
        return self.batches_per_epoch - self.start

    def _identities(self, epoch: int) -> np.ndarray:
        """(steps, P * world_size) distinct identities per step; shared by every rank."""
        rng = np.random.default_rng([self.seed, epoch, 0])
        step_ids = self.num_ids_per_batch * self.world_size
        queue = np.empty(0, dtype=self.pids.dtype)
        out = np.empty((self.batches_per_epoch, step_ids), dtype=self.pids.dtype)
        for s in range(self.batches_per_epoch):
            out[s], queue = _take(rng, queue, self.pids, step_ids)
        return out

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All of this rank's batches of ``epoch`` (record indices)."""
        rng = np.random.default_rng([self.seed, epoch, 1, self.rank, self.world_size])
        p, k = self.num_ids_per_batch, self.num_instances
        queues: dict[tuple[int, int], np.ndarray] = {}
        batches = []
        for ids in self._identities(epoch)[:, self.rank * p:(self.rank + 1) * p]:
            halves = []
            for modality in (VISIBLE, INFRARED):
                for pid in ids:
                    key = (int(pid), modality)
                    pool = self.pools[key]
                    if len(pool) < k:
                        taken = np.concatenate([rng.permutation(pool),
                                                rng.choice(pool, k - len(pool))])
                    else:
                        taken, queues[key] = _take(rng, queues.get(key, pool[:0]), pool, k)
                    halves.append(taken)
            batches.append(np.concatenate(halves).tolist())
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.epoch_batches(self.epoch)[self.start:]
