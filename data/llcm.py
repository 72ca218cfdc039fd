"""LLCM reader: low-light visible / near-infrared, nine cameras."""
from __future__ import annotations

import os
import re

from data.base import (
    ImageRecord,
    VIReIDDataset,
    keep_two_modality_ids,
    list_images,
    read_id_file,
    read_list_file,
    sort_records,
)
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

_CAM = re.compile(r"cam(\d+)")


class LLCM(VIReIDDataset):
    """LLCM: training lists in ``idx/``, test images under ``test_vis/`` and ``test_nir/``.

    Training labels of ``idx/train_vis.txt`` and ``idx/train_nir.txt`` are
    relabelled 0..N-1 together (sorted label order); the camera is read from the
    ``cam<c>`` part of each path.

    Attributes:
        train: training records.
        test_vis: visible images of the ids in ``idx/test_id.txt``, sorted by (cam, pid, file).
        test_nir: near-infrared images of the same ids, same order.
    """

    name = "llcm"
    layout = "idx/train_{vis,nir}.txt, idx/test_id.txt, test_vis/ and test_nir/cam<c>/<pid:04d>/"

    def title(self) -> str:
        return "LLCM"

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
        self.test_vis = self._test("vis", VISIBLE, ids)
        self.test_nir = self._test("nir", INFRARED, ids)

    def subsets(self) -> list[tuple[str, list[ImageRecord]]]:
        return super().subsets() + [("test visible", self.test_vis),
                                    ("test near-infrared", self.test_nir)]
