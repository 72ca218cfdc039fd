"""RegDB reader: one visible and one thermal camera, ten fixed train/test splits."""
from __future__ import annotations

import os

from data.base import ImageRecord, VIReIDDataset, keep_two_modality_ids, read_list_file
from utils.constants import INFRARED, REGDB_THERMAL_CAM, REGDB_VISIBLE_CAM, VISIBLE


class RegDB(VIReIDDataset):
    """RegDB for trial ``cfg.DATA.TRIAL`` (1..10).

    Reads ``idx/{train,test}_{visible,thermal}_<t>.txt``. Visible images get
    camera 2 and thermal images camera 1 (``utils.constants``). Training labels
    come from the files (already 0..205) and are relabelled 0..N-1 in sorted
    order, which changes nothing unless an identity lacks a modality.

    Attributes:
        train: training records of the trial.
        test_visible: visible test records, pid = the file's label.
        test_thermal: thermal test records, pid = the file's label.
    """

    name = "regdb"
    layout = "Visible/, Thermal/ and idx/{train,test}_{visible,thermal}_<trial>.txt"

    def title(self) -> str:
        return f"RegDB trial {self.cfg.DATA.TRIAL}"

    def _split(self, kind: str, modality: int) -> list[ImageRecord]:
        trial = self.cfg.DATA.TRIAL
        band = "visible" if modality == VISIBLE else "thermal"
        cam = REGDB_VISIBLE_CAM if modality == VISIBLE else REGDB_THERMAL_CAM
        list_path = os.path.join(self.root, "idx", f"{kind}_{band}_{trial}.txt")
        entries = read_list_file(list_path, self.root, self.title())
        return [ImageRecord(e.path, e.label, cam, modality) for e in entries]

    def _load(self) -> None:
        if self.need_train:
            self.train = keep_two_modality_ids(
                self._split("train", VISIBLE) + self._split("train", INFRARED),
                f"{self.title()} training set")
        self.test_visible = self._split("test", VISIBLE)
        self.test_thermal = self._split("test", INFRARED)

    def subsets(self) -> list[tuple[str, list[ImageRecord]]]:
        return super().subsets() + [("test visible", self.test_visible),
                                    ("test thermal", self.test_thermal)]
