"""SYSU-MM01 reader: six cameras (1, 2, 4, 5 RGB; 3, 6 infrared), id lists in exp/."""
from __future__ import annotations

import os

from data.base import (
    ImageRecord,
    VIReIDDataset,
    keep_two_modality_ids,
    list_images,
    read_id_file,
    sort_records,
)
from utils.constants import INFRARED, SYSU_IR_CAMS, SYSU_RGB_CAMS, VISIBLE
from utils.errors import UserError


class SYSUMM01(VIReIDDataset):
    """SYSU-MM01 with the official id split (``exp/{train,val,test}_id.txt``).

    Training uses train + val ids when ``cfg.DATA.SYSU_VAL_AS_TRAIN`` (the
    field's practice), else train ids only and the val ids become a held-out
    selection split. Training pids are relabelled 0..N-1 in sorted pid order;
    evaluation records keep the dataset's pids. Every list is sorted by
    (cam, pid, file name).

    Attributes:
        train: training records.
        query: every IR image (cams 3, 6) of the test ids.
        gallery_pool: every RGB image (cams 1, 2, 4, 5) of the test ids; the
            protocol samples galleries from it (see ``images_by_cam_pid``).
        val_query, val_gallery_pool: the same for the val ids, only when they
            are held out (empty lists otherwise).
    """

    name = "sysumm"
    layout = "cam1/ .. cam6/<pid:04d>/<n:04d>.jpg and exp/{train,val,test}_id.txt"

    def title(self) -> str:
        if not self.need_train:
            return "SYSU-MM01"
        ids = "train+val ids" if self.cfg.DATA.SYSU_VAL_AS_TRAIN else "train ids, val held out"
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
            modality = INFRARED if cam in SYSU_IR_CAMS else VISIBLE
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

    def _load(self) -> None:
        test_ids = self._ids("test")
        self.val_query: list[ImageRecord] = []
        self.val_gallery_pool: list[ImageRecord] = []
        if self.need_train:
            train_ids = self._ids("train")
            val_ids = self._ids("val")
            overlap = sorted(set(test_ids) & (set(train_ids) | set(val_ids)))
            if overlap:
                raise UserError(f"{self.title()}: exp/test_id.txt shares ids with the training "
                                f"ids (e.g. {overlap[0]}); the split must be disjoint")
            if self.cfg.DATA.SYSU_VAL_AS_TRAIN:
                train_ids = sorted(set(train_ids) | set(val_ids))
            else:
                self.val_query = self._records(val_ids, SYSU_IR_CAMS, "val")
                self.val_gallery_pool = self._records(val_ids, SYSU_RGB_CAMS, "val")
            records = self._records(train_ids, SYSU_RGB_CAMS + SYSU_IR_CAMS, "training")
            records.sort(key=lambda r: (r.pid, r.cam, os.path.basename(r.path)))
            self.train = keep_two_modality_ids(records, f"{self.title()} training set")
        self.query = self._records(test_ids, SYSU_IR_CAMS, "test")
        self.gallery_pool = self._records(test_ids, SYSU_RGB_CAMS, "test")

    def subsets(self) -> list[tuple[str, list[ImageRecord]]]:
        out = super().subsets()
        if self.val_query:
            out += [("val query (IR)", self.val_query),
                    ("val gallery pool", self.val_gallery_pool)]
        return out + [("query (IR)", self.query), ("gallery pool (RGB)", self.gallery_pool)]

