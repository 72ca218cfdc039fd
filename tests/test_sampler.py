"""CrossModalityIdentitySampler invariants on in-memory records."""
from __future__ import annotations

import math
from collections import Counter

import pytest
import torch.distributed as dist

from data.base import ImageRecord
from data.sampler import CrossModalityIdentitySampler
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError


def make_records(counts: dict[int, tuple[int, int]]) -> list[ImageRecord]:
    """counts: pid -> (visible images, infrared images)."""
    records = []
    for pid, (nv, ni) in counts.items():
        records += [ImageRecord(f"v{pid}_{i}.jpg", pid, 1, VISIBLE) for i in range(nv)]
        records += [ImageRecord(f"i{pid}_{i}.jpg", pid, 3, INFRARED) for i in range(ni)]
    return records


RECORDS = make_records({pid: (6 + pid % 5, 3 + pid % 4) for pid in range(12)})


def check_batch(batch: list[int], records: list[ImageRecord], p: int, k: int) -> None:
    assert len(batch) == 2 * p * k
    per = Counter((records[i].pid, records[i].modality) for i in batch)
    pids = {pid for pid, _ in per}
    assert len(pids) == p
    for pid in pids:  # K visible and K infrared of every identity
        assert per[(pid, VISIBLE)] == k and per[(pid, INFRARED)] == k
        for modality in (VISIBLE, INFRARED):
            taken = [i for i in batch if records[i].pid == pid and records[i].modality == modality]
            available = sum(1 for r in records if r.pid == pid and r.modality == modality)
            # Repeats only where the identity has fewer than K images of the modality.
            assert len(set(taken)) == min(k, available)


def test_batches_hold_both_modalities_of_every_identity() -> None:
    s = CrossModalityIdentitySampler(RECORDS, batch_size=16, num_instances=2, seed=1)
    batches = list(s)
    n_vis = sum(r.modality == VISIBLE for r in RECORDS)
    assert len(batches) == len(s) == math.ceil(n_vis / (4 * 2))
    for b in batches:
        check_batch(b, RECORDS, 4, 2)
    # Identities come round in passes: counts differ by at most one.
    counts = Counter(RECORDS[b[0 + 2 * j]].pid for b in batches for j in range(4))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_small_identities_use_replacement_only_when_needed() -> None:
    records = make_records({0: (1, 5), 1: (5, 2), 2: (8, 8), 3: (3, 1)})
    s = CrossModalityIdentitySampler(records, batch_size=16, num_instances=4, seed=0)
    for b in s:
        check_batch(b, records, 2, 4)


def test_large_identity_images_come_round() -> None:
    records = make_records({0: (9, 9), 1: (9, 9)})
    s = CrossModalityIdentitySampler(records, batch_size=16, num_instances=4, seed=3,
                                     iters_per_epoch=9)
    seen = Counter(i for b in s for i in b)
    assert len(s) == 9 and set(seen) == set(range(len(records)))
    assert max(seen.values()) - min(seen.values()) <= 1  # 36 draws over 9 images each


def test_deterministic_per_seed_and_epoch() -> None:
    a = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=5)
    b = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=5)
    a.set_epoch(2)
    b.set_epoch(2)
    e2 = list(a)
    assert e2 == list(b) == list(a)
    a.set_epoch(3)
    assert list(a) != e2
    c = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=6)
    c.set_epoch(2)
    assert list(c) != e2


def test_set_start_skips_batches() -> None:
    s = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=0)
    s.set_epoch(4)
    full = list(s)
    s.set_start(3)
    assert len(s) == len(full) - 3 and list(s) == full[3:]
    s.set_epoch(5)
    assert s.start == 0 and len(s) == len(full)
    with pytest.raises(ValueError):
        s.set_start(len(full) + 1)


def test_iters_per_epoch_overrides_count() -> None:
    s = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=0, iters_per_epoch=7)
    assert len(s) == 7 and len(list(s)) == 7


def test_two_ranks_get_disjoint_identities_and_equal_steps() -> None:
    ranks = [CrossModalityIdentitySampler(RECORDS, 8, 2, seed=9, rank=r, world_size=2)
             for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    b0, b1 = list(ranks[0]), list(ranks[1])
    n_vis = sum(r.modality == VISIBLE for r in RECORDS)
    assert len(b0) == len(b1) == len(ranks[0]) == math.ceil(n_vis / (2 * 2 * 2))
    for x, y in zip(b0, b1):
        check_batch(x, RECORDS, 2, 2)
        check_batch(y, RECORDS, 2, 2)
        assert not {RECORDS[i].pid for i in x} & {RECORDS[i].pid for i in y}


def test_identities_without_both_modalities_are_ignored() -> None:
    records = make_records({0: (4, 4), 1: (4, 0), 2: (4, 4), 3: (0, 3)})
    s = CrossModalityIdentitySampler(records, 8, 2, seed=0)
    assert {records[i].pid for b in s for i in b} == {0, 2}


def test_too_few_identities_or_bad_batch() -> None:
    records = make_records({0: (4, 4), 1: (4, 4)})
    with pytest.raises(UserError, match="needs 8 identities with both modalities"):
        CrossModalityIdentitySampler(records, 16, 2, rank=0, world_size=2)
    with pytest.raises(UserError, match="multiple of 2 x DATA.SAMPLE_ID_INSTANCE"):
        CrossModalityIdentitySampler(records, 6, 2)


def test_rank_and_world_size_from_torch_distributed(tmp_path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        s = CrossModalityIdentitySampler(RECORDS, 16, 2, seed=0)
        assert (s.rank, s.world_size) == (0, 1)
        assert list(s) == list(CrossModalityIdentitySampler(RECORDS, 16, 2, seed=0, rank=0,
                                                            world_size=1))
    finally:
        dist.destroy_process_group()
