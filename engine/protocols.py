"""Evaluation protocols of SYSU-MM01, RegDB and LLCM as small explicit functions.

A protocol is a list of :class:`Setting` s. Each names a query and a gallery
feature set and, where the protocol samples its gallery, a function from the
trial number to the gallery indices; features are extracted once and every
trial only indexes them.

Trial numbering: trials are numbered 1..N everywhere. SYSU-MM01's official
gallery of trial ``t`` is row ``t`` (1-based) of ``rand_perm_cam{cam}{pid}``;
the seeded sampling of trial ``t`` calls ``random.seed(t - 1)`` so that trials
1..10 reproduce the AGW family's ``for trial in range(10)`` galleries exactly.
LLCM's seeded galleries follow the same rule.
"""
from __future__ import annotations

import os
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io

from data.base import ImageRecord
from utils.constants import SYSU_INDOOR_RGB_CAMS, SYSU_RGB_CAMS
from utils.errors import UserError

SYSU_SEARCH_CAMS = {"all": SYSU_RGB_CAMS, "indoor": SYSU_INDOOR_RGB_CAMS}
SYSU_SHOTS = (1, 10)
LLCM_VIS_CAMS, LLCM_NIR_CAMS = tuple(range(1, 10)), (1, 2, 4, 5, 6, 7, 8, 9)


@dataclass(frozen=True)
class Setting:
    """One evaluated setting.

    Attributes:
        name: e.g. ``all-search single-shot`` or ``visible-to-thermal``.
        query: name of the query feature set; gallery: of the gallery set.
        rule: metric rule of :func:`utils.metrics.evaluate_ranking`.
        trials: trial numbers (1-based) to evaluate.
        sample: trial -> gallery indices into the gallery set (None = all of it).
    """

    name: str
    query: str
    gallery: str
    rule: str
    trials: tuple[int, ...]
    sample: Callable[[int], np.ndarray] | None = None


def sysu_setting_name(mode: str, shots: int) -> str:
    """``all-search single-shot``, ``indoor-search multi-shot``, ..."""
    return f"{mode}-search {'single' if shots == 1 else 'multi'}-shot"


def group_by_id_camera(records: Sequence[ImageRecord]) -> dict[tuple[int, int], list[int]]:
    """Indices of ``records`` per (pid, cam), each list in file-name order.

    ``groups[(pid, cam)][i - 1]`` is the i-th image of that person in that
    camera folder: the indexing of the official permutation file and of the
    sorted file lists the seeded sampling draws from.
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


class SysuPermutations:
    """The official ``rand_perm_cam.mat``: ``perm(cam, pid)`` is a (10, n) 1-based matrix."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)
        try:
            table = scipy.io.loadmat(self.path)["rand_perm_cam"]
        except FileNotFoundError:
            raise UserError(f"SYSU-MM01 permutation file {self.path} not found") from None
        except Exception as exc:  # noqa: BLE001 - scipy raises many types for a bad file
            raise UserError(f"{self.path}: not the official rand_perm_cam.mat "
                            f"({type(exc).__name__}: {exc})") from None
        if table.shape[0] < 6:
            raise UserError(f"{self.path}: rand_perm_cam has {table.shape[0]} cameras, "
                            "expected 6")
        self._table = table
        self.num_trials = min((int(np.asarray(c).shape[0]) for cam in range(6)
                               for c in np.asarray(table[cam, 0]).ravel()
                               if np.asarray(c).size), default=0)

    def __call__(self, cam: int, pid: int) -> np.ndarray:
        """(trials, n) int64 matrix of 1-based indices; (0, 0) when the id is not in cam."""
        cells = self._table[cam - 1, 0]
        if pid > cells.shape[0]:
            return np.zeros((0, 0), dtype=np.int64)
        m = np.asarray(cells[pid - 1, 0])
        return m.astype(np.int64) if m.size else np.zeros((0, 0), dtype=np.int64)


def sample_gallery_official(records: Sequence[ImageRecord], cams: Sequence[int], trial: int,
                            shots: int, perm: SysuPermutations) -> np.ndarray:
    """Official SYSU-MM01 gallery of ``trial`` (1-based): the first ``shots`` entries
    of row ``trial`` of each (camera, id) permutation, 1-based into its sorted images.

    Raises:
        UserError: the dataset's image count of a (camera, id) differs from the file's.

    Returns:
        (n,) int64 indices into ``records``, ordered by (pid, camera order).
    """
    groups = group_by_id_camera(records)
    out: list[int] = []
    for pid in sorted({p for p, _ in groups}):
        for cam in cams:
            files = groups.get((pid, cam), [])
            m = perm(cam, pid)
            if m.shape[1] != len(files):
                raise UserError(
                    f"{perm.path}: lists {m.shape[1]} images for id {pid} in cam{cam} but "
                    f"the dataset has {len(files)}; use TEST.GALLERY random for this dataset")
            if files:
                out.extend(files[j - 1] for j in m[trial - 1, :shots])
    return np.asarray(out, dtype=np.int64)


def resolve_sysu_gallery(choice: str, perm_path: str, root: str
                         ) -> tuple[str, SysuPermutations | None]:
    """Pick the SYSU gallery sampling: ``official`` (with its file) or ``random``.

    Args:
        choice: TEST.GALLERY: auto (official when the file exists), official or random.
        perm_path: TEST.PERM_PATH; empty = ``<root>/exp/rand_perm_cam.mat``.
        root: dataset root.

    Raises:
        UserError: official asked for (or an explicit TEST.PERM_PATH given) and
            the file is missing or unreadable.
    """
    if choice == "random":
        return "random", None
    path = perm_path or os.path.join(root, "exp", "rand_perm_cam.mat")
    if not Path(path).is_file():
        if choice == "official" or perm_path:
            where = "TEST.PERM_PATH" if perm_path else "<DATA.ROOT>/exp/rand_perm_cam.mat"
            raise UserError(f"SYSU-MM01 official gallery: permutation file {path} not found "
                            f"({where}); set TEST.PERM_PATH to rand_perm_cam.mat or use "
                            "TEST.GALLERY random")
        return "random", None
    return "official", SysuPermutations(path)


def sysu_settings(pool: Sequence[ImageRecord], modes: Sequence[str], shots: Sequence[int],
                  trials: Sequence[int], method: str, perm: SysuPermutations | None,
                  query: str = "query", gallery: str = "gallery") -> list[Setting]:
    """SYSU-MM01 settings: every IR query (cams 3, 6) against a sampled RGB gallery.

    All-search draws from cams 1, 2, 4, 5, indoor-search from cams 1, 2; single-
    shot takes one image per id per camera, multi-shot up to 10.

    Args:
        pool: the gallery pool (every RGB image of the evaluated ids).
        modes: subset of ``all``, ``indoor``; shots: subset of 1, 10.
        trials: 1-based trial numbers.
        method: ``official`` (needs ``perm``) or ``random``.
    """
    if method == "official" and perm is not None and max(trials) > perm.num_trials:
        raise UserError(f"{perm.path} holds {perm.num_trials} trials; TEST.NUM_TRIALS or "
                        f"--trial asks for trial {max(trials)}")
    out = []
    for mode in modes:
        cams = SYSU_SEARCH_CAMS[mode]
        for k in shots:
            if method == "official":
                def sample(t: int, cams=cams, k=k) -> np.ndarray:
                    return sample_gallery_official(pool, cams, t, k, perm)
            else:
                def sample(t: int, cams=cams, k=k) -> np.ndarray:
                    return sample_gallery_seeded(pool, cams, t - 1, k)
            out.append(Setting(sysu_setting_name(mode, k), query, gallery, "sysu",
                               tuple(trials), sample))
    return out


def regdb_settings(trial: int) -> list[Setting]:
    """RegDB trial ``trial``: visible->thermal (headline) and thermal->visible, full sets."""
    return [Setting("visible-to-thermal", "visible", "thermal", "regdb", (trial,)),
            Setting("thermal-to-visible", "thermal", "visible", "regdb", (trial,))]


def llcm_settings(vis: Sequence[ImageRecord], nir: Sequence[ImageRecord],
                  trials: Sequence[int]) -> list[Setting]:
    """LLCM: infrared->visible and visible->infrared; each trial's gallery is one
    seeded random image per id per camera (seed ``trial - 1``), queries are all images."""
    def vis_gallery(t: int) -> np.ndarray:
        return sample_gallery_seeded(vis, LLCM_VIS_CAMS, t - 1)

    def nir_gallery(t: int) -> np.ndarray:
        return sample_gallery_seeded(nir, LLCM_NIR_CAMS, t - 1)

    return [Setting("infrared-to-visible", "infrared", "visible", "llcm", tuple(trials),
                    vis_gallery),
            Setting("visible-to-infrared", "visible", "infrared", "llcm", tuple(trials),
                    nir_gallery)]
