"""What an evaluation protocol is made of: settings, trials and gallery sampling.

A protocol is a list of :class:`Setting` s that a dataset builds from its
evaluation sets (``VIReIDDataset.settings``). Each setting names a query and a
gallery set and, where the protocol samples its gallery, a function from the
trial number to the gallery indices; features are extracted once and every
trial only indexes them.

Trial numbering: trials are numbered 1..N everywhere. A seeded gallery of
trial ``t`` is drawn after ``random.seed(t - 1)``, so that trials 1..10
reproduce the AGW family's ``for trial in range(10)`` galleries exactly.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from data.base import ImageRecord
from utils.metrics import RankingRule


@dataclass(frozen=True)
class Setting:
    """One evaluated setting.

    Attributes:
        name: e.g. ``all-search single-shot`` or ``visible-to-thermal``.
        query: name of the query feature set; gallery: of the gallery set.
        rule: the ranking rule of :func:`utils.metrics.evaluate_ranking`.
        trials: trial numbers (1-based) to evaluate.
        sample: trial -> gallery indices into the gallery set (None = all of it).
    """

    name: str
    query: str
    gallery: str
    rule: RankingRule
    trials: tuple[int, ...]
    sample: Callable[[int], np.ndarray] | None = None

    def gallery_indices(self, trial: int, size: int) -> np.ndarray:
        """(n,) int64 indices of trial ``trial``'s gallery into a set of ``size`` records."""
        return np.arange(size) if self.sample is None else self.sample(trial)


def group_by_id_camera(records: Sequence[ImageRecord]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``records`` per (pid, cam), each list in file-name order.

    ``groups[(pid, cam)][i - 1]`` is the i-th image of that person in that
    camera folder: the indexing of SYSU-MM01's official permutation file and of
    the sorted file lists the seeded sampling draws from.
    """
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i, rec in enumerate(records):
        groups[(rec.pid, rec.cam)].append(i)
    return {k: sorted(v, key=lambda i: (os.path.basename(records[i].path), records[i].path))
            for k, v in groups.items()}


def sample_gallery_seeded(records: Sequence[ImageRecord], cams: Sequence[int], seed: int,
                          shots: int = 1) -> np.ndarray:
    """The AGW family's gallery sampling, reproduced draw for draw.

    ``random.seed(seed)``, then for each id in sorted order and each camera in
    ``cams`` order where that id has images: ``random.choice`` of the sorted
    files (single-shot), or ``random.sample`` of ``min(shots, n)`` of them
    (multi-shot, as the AGW family's multi-shot variant; it asks for 10).
    A private ``random.Random(seed)`` gives the same draws without touching
    the global state.

    Returns:
        (n,) int64 indices into ``records``, ordered by (pid, camera order).
    """
    rng = random.Random(seed)
    groups = group_by_id_camera(records)
    out: list[int] = []
    for pid in sorted({p for p, _ in groups}):
        for cam in cams:
            files = groups.get((pid, cam))
            if not files:
                continue
            if shots == 1:
                out.append(rng.choice(files))
            else:
                out.extend(rng.sample(files, min(shots, len(files))))
    return np.asarray(out, dtype=np.int64)


def seeded_gallery(records: Sequence[ImageRecord], cams: Sequence[int], shots: int = 1
                   ) -> Callable[[int], np.ndarray]:
    """Trial -> :func:`sample_gallery_seeded` with seed ``trial - 1``."""
    def sample(trial: int) -> np.ndarray:
        return sample_gallery_seeded(records, cams, trial - 1, shots)
    return sample


def both_directions(names: tuple[str, str], rule: RankingRule, trials: Sequence[int],
                    samplers: dict[str, Callable[[int], np.ndarray]] | None = None,
                    labels: dict[str, str] | None = None) -> list[Setting]:
    """Two settings, ``a-to-b`` then ``b-to-a``, over the sets ``names = (a, b)``.

    Args:
        names: the two set names; the first direction is the headline.
        rule: ranking rule of both.
        trials: 1-based trials.
        samplers: per gallery set, trial -> gallery indices (a set not listed is
            used whole).
        labels: how a set is named in the setting's name (e.g. infrared -> thermal).
    """
    samplers, labels = samplers or {}, labels or {}
    out = []
    for query, gallery in (names, names[::-1]):
        name = f"{labels.get(query, query)}-to-{labels.get(gallery, gallery)}"
        out.append(Setting(name, query, gallery, rule, tuple(trials), samplers.get(gallery)))
    return out
