"""LLCM reader: low-light visible / near-infrared, nine cameras."""
from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

from yacs.config import CfgNode

from data.base import (
    ImageRecord,
    VIReIDDataset,
    keep_two_modality_ids,
    list_images,
    read_id_file,
    read_list_file,
    register_dataset,
    sort_records,
)
from data.fingerprint import OfficialCount
from data.protocols import Setting, both_directions, seeded_gallery
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.metrics import RankingRule

_CAM = re.compile(r"cam(\d+)")
VIS_CAMS, NIR_CAMS = tuple(range(1, 10)), (1, 2, 4, 5, 6, 7, 8, 9)

# Counts of the CVPR 2023 paper (Zhang & Wang, DEEN, Sec. 3): train 713 ids, 16,946 VIS +
# 13,975 IR images; test 351 ids, 8,680 VIS + 7,166 IR. The dataset was adjusted after
# publication (its README's "updated" table), so a later copy may differ. NIR cam3 holds no
# test image in the release (and DEEN's code skips it).
_PAPER = "LLCM paper (Zhang & Wang, CVPR 2023): train 713 ids, test 351 ids"
OFFICIAL_COUNTS = tuple(OfficialCount(split, field, value, _PAPER) for split, field, value in (
    ("train", "ids", 713), ("train", "visible", 16946), ("train", "infrared", 13975),
    ("test", "ids", 351), ("test", "visible", 8680), ("test", "infrared", 7166)))


@register_dataset("llcm")
class LLCM(VIReIDDataset):
    """LLCM: training lists in ``idx/``, test images under ``test_vis/`` and ``test_nir/``.

    Training labels of ``idx/train_vis.txt`` and ``idx/train_nir.txt`` are
    relabelled 0..N-1 together (sorted label order); the camera is read from the
    ``cam<c>`` part of each path.

    Evaluation sets: ``visible`` and ``infrared`` = the test ids' images under
    ``test_vis/`` and ``test_nir/``, sorted by (cam, pid, file). Protocol (the
    CVPR 2023 paper's definition): infrared->visible (the headline) and
    visible->infrared; all images of one modality are queries, each gallery
    trial takes one seeded random image per id per camera of the other
    (``random.seed(trial - 1)``, 10 trials); a query skips gallery images of its
    own id seen by its camera; de-duplicated CMC.
    """

    label = "LLCM"
    layout = "idx/train_{vis,nir}.txt, idx/test_id.txt, test_vis/ and test_nir/cam<c>/<pid:04d>/"

    headline = "infrared-to-visible"
    rule = RankingRule("llcm", skip="id_camera", dedup_cmc=True)
    official_counts = OFFICIAL_COUNTS
    expected_cameras = {("test", "visible"): VIS_CAMS, ("test", "infrared"): NIR_CAMS}
    id_files = ("idx/*.txt",)

    def _train(self, band: str, modality: int) -> list[ImageRecord]:
        list_path = os.path.join(self.root, "idx", f"train_{band}.txt")
        records = []
        for e in read_list_file(list_path, self.root, self.title()):
            cams = _CAM.findall(e.rel)
            if not cams:
                raise UserError(f"{list_path} line {e.line}: expected a cam<c> folder in the "
                                f"image path, got {e.rel!r}")
            records.append(ImageRecord(e.path, e.label, int(cams[-1]), modality))
        return records

    def _test(self, band: str, modality: int, ids: list[int]) -> list[ImageRecord]:
        top = os.path.join(self.root, f"test_{band}")
        if not os.path.isdir(top):
            raise UserError(f"{self.title()}: test folder {top} not found (expected {self.layout})")
        records = []
        for cam_dir in os.listdir(top):
            m = re.fullmatch(r"cam(\d+)", cam_dir)
            if not m:
                continue
            for pid in ids:
                folder = os.path.join(top, cam_dir, f"{pid:04d}")
                if os.path.isdir(folder):
                    records += [ImageRecord(os.path.join(folder, f), pid, int(m.group(1)), modality)
                                for f in list_images(folder)]
        if not records:
            raise UserError(f"{self.title()}: no images of the test ids under "
                            f"{top}/cam<c>/<pid:04d>/")
        return sort_records(records)

    def _load(self) -> None:
        if self.need_train:
            records = self._train("vis", VISIBLE) + self._train("nir", INFRARED)
            self.train = keep_two_modality_ids(records, f"{self.title()} training set")
        ids = read_id_file(os.path.join(self.root, "idx", "test_id.txt"), self.title())
        self.test_sets = {"visible": self._test("vis", VISIBLE, ids),
                          "infrared": self._test("nir", INFRARED, ids)}

    def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]], split: str = "test",
                 trials: Sequence[int] | None = None, monitor: bool = False,
                 **options: Any) -> tuple[list[Setting], dict[str, Any]]:
        """Infrared->visible, then visible->infrared, over seeded single-shot galleries."""
        trials = tuple(trials or range(1, cfg.TEST.NUM_TRIALS + 1))
        samplers = {"visible": seeded_gallery(sets["visible"], VIS_CAMS),
                    "infrared": seeded_gallery(sets["infrared"], NIR_CAMS)}
        info = {"gallery_sampling": "random", "gallery_trials": list(trials),
                "trial_note": "trial t = random.seed(t - 1)"}
        return both_directions(("infrared", "visible"), self.rule, trials, samplers), info
