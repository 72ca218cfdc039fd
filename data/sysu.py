"""SYSU-MM01: six cameras (1, 2, 4, 5 RGB; 3, 6 infrared), id lists in exp/, and its protocol."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from yacs.config import CfgNode

from data.base import (
    ImageRecord,
    ProtocolOption,
    VIReIDDataset,
    keep_two_modality_ids,
    list_images,
    read_id_file,
    register_dataset,
    sort_records,
)
from data.fingerprint import OfficialCount
from data.protocols import Setting, group_by_id_camera, seeded_gallery
from utils.config import Key, add_config_section
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.metrics import RankingRule

RGB_CAMS = (1, 2, 4, 5)
IR_CAMS = (3, 6)
SEARCH_CAMS = {"all": RGB_CAMS, "indoor": (1, 2)}
SHOTS = (1, 10)
GALLERIES = ("auto", "official", "random")

add_config_section("SYSUMM", "SYSU-MM01's own options", [
    Key("VAL_AS_TRAIN", True, "Train on train + val ids (the field's practice); no = hold the "
        "official val ids out as the validation split."),
    Key("GALLERY", "auto", "Gallery sampling: auto (official file if found, else random), "
        "official (rand_perm_cam.mat) or random (seeded, AGW family).", choices=GALLERIES),
    Key("PERM_PATH", "", "Official permutation file; empty = <DATA.ROOT>/exp/rand_perm_cam.mat."),
], owner=__name__, renames={"DATA.SYSU_VAL_AS_TRAIN": "VAL_AS_TRAIN",
                            "TEST.GALLERY": "GALLERY", "TEST.PERM_PATH": "PERM_PATH"})

# Counts of the release with the official id split (Wu et al., ICCV 2017, and the AGW
# family's pre-processing of train + val ids): 395 train + val ids with 22,258 RGB and
# 11,909 IR images; 96 test ids whose IR images (cams 3, 6) are the 3,803 queries.
_TRAIN_SOURCE = "SYSU-MM01 train + val ids (Wu et al. ICCV 2017; AGW's pre_process_sysu.py)"
_TEST_SOURCE = "SYSU-MM01 evaluation protocol: 96 test ids, 3,803 IR queries"
OFFICIAL_COUNTS = (OfficialCount("train", "ids", 395, _TRAIN_SOURCE),
                   OfficialCount("train", "visible", 22258, _TRAIN_SOURCE),
                   OfficialCount("train", "infrared", 11909, _TRAIN_SOURCE),
                   OfficialCount("test", "ids", 96, _TEST_SOURCE),
                   OfficialCount("test", "infrared", 3803, _TEST_SOURCE))


def setting_name(mode: str, shots: int) -> str:
    """``all-search single-shot``, ``indoor-search multi-shot``, ..."""
    return f"{mode}-search {'single' if shots == 1 else 'multi'}-shot"


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
                    f"the dataset has {len(files)}; use SYSUMM.GALLERY random for this dataset")
            if files:
                out.extend(files[j - 1] for j in m[trial - 1, :shots])
    return np.asarray(out, dtype=np.int64)


def resolve_gallery(choice: str, perm_path: str, root: str
                    ) -> tuple[str, SysuPermutations | None]:
    """Pick the gallery sampling: ``official`` (with its file) or ``random``.

    Args:
        choice: SYSUMM.GALLERY: auto (official when the file exists), official or random.
        perm_path: SYSUMM.PERM_PATH; empty = ``<root>/exp/rand_perm_cam.mat``.
        root: dataset root.

    Raises:
        UserError: official asked for (or an explicit SYSUMM.PERM_PATH given) and
            the file is missing or unreadable.
    """
    if choice == "random":
        return "random", None
    path = perm_path or os.path.join(root, "exp", "rand_perm_cam.mat")
    if not Path(path).is_file():
        if choice == "official" or perm_path:
            where = "SYSUMM.PERM_PATH" if perm_path else "<DATA.ROOT>/exp/rand_perm_cam.mat"
            raise UserError(f"SYSU-MM01 official gallery: permutation file {path} not found "
                            f"({where}); set SYSUMM.PERM_PATH to rand_perm_cam.mat or use "
                            "SYSUMM.GALLERY random")
        return "random", None
    return "official", SysuPermutations(path)


def search_settings(pool: Sequence[ImageRecord], rule: RankingRule, modes: Sequence[str],
                    shots: Sequence[int], trials: Sequence[int], perm: SysuPermutations | None,
                    query: str = "infrared", gallery: str = "visible") -> list[Setting]:
    """Every IR query (cams 3, 6) against a sampled RGB gallery, per mode and shot count.

    All-search draws from cams 1, 2, 4, 5, indoor-search from cams 1, 2; single-
    shot takes one image per id per camera, multi-shot up to 10.

    Args:
        pool: the gallery pool (every RGB image of the evaluated ids).
        modes: subset of ``all``, ``indoor``; shots: subset of 1, 10.
        trials: 1-based trial numbers.
        perm: the official permutations, or None for the seeded sampling.
    """
    out = []
    for mode in modes:
        cams = SEARCH_CAMS[mode]
        for k in shots:
            if perm is not None:
                def sample(t: int, cams=cams, k=k) -> np.ndarray:
                    return sample_gallery_official(pool, cams, t, k, perm)
            else:
                sample = seeded_gallery(pool, cams, k)
            out.append(Setting(setting_name(mode, k), query, gallery, rule, tuple(trials),
                               sample))
    return out


@register_dataset("sysumm")
class SYSUMM01(VIReIDDataset):
    """SYSU-MM01 with the official id split (``exp/{train,val,test}_id.txt``).

    Training uses train + val ids when ``cfg.SYSUMM.VAL_AS_TRAIN`` (the
    field's practice), else train ids only and the val ids become a held-out
    validation split. Training pids are relabelled 0..N-1 in sorted pid order;
    evaluation records keep the dataset's pids. Every list is sorted by
    (cam, pid, file name).

    Evaluation sets: ``infrared`` = every IR image (cams 3, 6) of the test ids,
    the queries; ``visible`` = every RGB image (cams 1, 2, 4, 5) of the test ids,
    the pool galleries are sampled from. Protocol: all / indoor search x single /
    multi-shot over 10 gallery trials, official permutation file or seeded
    sampling; a cam-3 query skips gallery cam 2 (same room), de-duplicated CMC.
    """

    label = "SYSU-MM01"
    layout = "cam1/ .. cam6/<pid:04d>/<n:04d>.jpg and exp/{train,val,test}_id.txt"
    headline = setting_name("all", 1)
    options = (
        ProtocolOption("mode", "SYSU-MM01 search mode (default both)", tuple(SEARCH_CAMS),
                       settings_arg="modes"),
        ProtocolOption("shots", "SYSU-MM01 gallery images per id per camera (default both)",
                       SHOTS, int, settings_arg="shots"),
        ProtocolOption("gallery", "SYSU-MM01 gallery sampling (default SYSUMM.GALLERY)",
                       GALLERIES[1:], config_key="SYSUMM.GALLERY"))
    val_hint = "or SYSUMM.VAL_AS_TRAIN = no for the official val ids"
    # Official camera labels [1 2 2 4 5 6]: cam 3 shares cam 2's room.
    rule = RankingRule("sysu", skip="camera", camera_groups=((3, 2),), dedup_cmc=True)
    official_counts = OFFICIAL_COUNTS
    expected_cameras = {(split, modality): cams for split in ("train", "test")
                        for modality, cams in (("visible", RGB_CAMS), ("infrared", IR_CAMS))}
    id_files = ("exp/*",)

    def title(self) -> str:
        if not self.need_train:
            return "SYSU-MM01"
        ids = "train+val ids" if self.cfg.SYSUMM.VAL_AS_TRAIN else "train ids, val held out"
        return f"SYSU-MM01 ({ids})"

    def _ids(self, split: str) -> list[int]:
        return read_id_file(os.path.join(self.root, "exp", f"{split}_id.txt"), self.title())

    def _records(self, ids: list[int], cams: tuple[int, ...], what: str) -> list[ImageRecord]:
        """Every image of ``ids`` in ``cams``; a person need not appear in every camera."""
        records = []
        for cam in cams:
            cam_dir = os.path.join(self.root, f"cam{cam}")
            if not os.path.isdir(cam_dir):
                raise UserError(f"{self.title()}: camera folder {cam_dir} not found "
                                f"(expected {self.layout})")
            modality = INFRARED if cam in IR_CAMS else VISIBLE
            for pid in ids:
                folder = os.path.join(cam_dir, f"{pid:04d}")
                if os.path.isdir(folder):
                    records += [ImageRecord(os.path.join(folder, f), pid, cam, modality)
                                for f in list_images(folder)]
        if not records:
            names = ", ".join(f"cam{c}" for c in cams)
            raise UserError(f"{self.title()}: no images of the {what} ids under {self.root} "
                            f"({names}/<pid:04d>/)")
        return sort_records(records)

    def _sets(self, ids: list[int], what: str) -> dict[str, list[ImageRecord]]:
        return {"infrared": self._records(ids, IR_CAMS, what),
                "visible": self._records(ids, RGB_CAMS, what)}

    def _load(self) -> None:
        test_ids = self._ids("test")
        if self.need_train:
            train_ids = self._ids("train")
            val_ids = self._ids("val")
            overlap = sorted(set(test_ids) & (set(train_ids) | set(val_ids)))
            if overlap:
                raise UserError(f"{self.title()}: exp/test_id.txt shares ids with the training "
                                f"ids (e.g. {overlap[0]}); the split must be disjoint")
            if self.cfg.SYSUMM.VAL_AS_TRAIN:
                train_ids = sorted(set(train_ids) | set(val_ids))
            else:
                self.val_sets = self._sets(val_ids, "val")
            records = self._records(train_ids, RGB_CAMS + IR_CAMS, "training")
            records.sort(key=lambda r: (r.pid, r.cam, os.path.basename(r.path)))
            self.train = keep_two_modality_ids(records, f"{self.title()} training set")
        self.test_sets = self._sets(test_ids, "test")

    def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]], split: str = "test",
                 trials: Sequence[int] | None = None, monitor: bool = False,
                 modes: Sequence[str] | None = None, shots: Sequence[int] | None = None,
                 **options: Any) -> tuple[list[Setting], dict[str, Any]]:
        """All / indoor search x single / multi-shot (``monitor``: all-search single-shot).

        The official permutation file covers the test ids only: validation
        galleries are always sampled with the seeded rule.

        Raises:
            UserError: the official file holds fewer trials than asked for.
        """
        trials = tuple(trials or range(1, cfg.TEST.NUM_TRIALS + 1))
        choice = "random" if split == "val" else cfg.SYSUMM.GALLERY
        method, perm = resolve_gallery(choice, cfg.SYSUMM.PERM_PATH, self.root)
        if perm is not None and max(trials) > perm.num_trials:
            raise UserError(f"{perm.path} holds {perm.num_trials} trials; TEST.NUM_TRIALS or "
                            f"--trial asks for trial {max(trials)}")
        if monitor:
            modes, shots = ("all",), (1,)
        info = {"gallery_sampling": method, "perm_path": perm.path if perm else None,
                "gallery_trials": list(trials),
                "trial_note": ("trial t = row t of rand_perm_cam" if perm else
                               "trial t = random.seed(t - 1), AGW family's sampling")}
        return (search_settings(sets["visible"], self.rule, modes or tuple(SEARCH_CAMS),
                                shots or SHOTS, trials, perm), info)
