"""RegDB reader: one visible and one thermal camera, ten fixed train/test splits."""
from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from yacs.config import CfgNode

from data.base import (
    ImageRecord,
    VIReIDDataset,
    keep_two_modality_ids,
    read_list_file,
    register_dataset,
)
from data.fingerprint import OfficialCount
from data.protocols import Setting, both_directions
from utils.constants import INFRARED, VISIBLE
from utils.metrics import RankingRule

# One camera per modality. Convention used here (the AGW family's): visible =
# camera 2, thermal = camera 1. The choice never changes RegDB results because
# its protocol applies no camera rule.
VISIBLE_CAM = 2
THERMAL_CAM = 1

# The release (Nguyen et al., Sensors 2017, and its split files): 412 ids with 10 visible
# + 10 thermal images each; every trial splits them 206 train / 206 test ids, so each
# split has 2,060 images per modality.
_RELEASE = "RegDB release: 412 ids x 10 visible + 10 thermal images, 206/206 ids per trial"
OFFICIAL_COUNTS = tuple(OfficialCount(split, field, value, _RELEASE)
                        for split in ("train", "test")
                        for field, value in (("ids", 206), ("visible", 2060),
                                             ("infrared", 2060)))


@register_dataset("regdb")
class RegDB(VIReIDDataset):
    """RegDB for trial ``cfg.DATA.TRIAL`` (1..10).

    Reads ``idx/{train,test}_{visible,thermal}_<t>.txt``. Visible images get
    camera 2 and thermal images camera 1 (``VISIBLE_CAM``, ``THERMAL_CAM``). Training labels
    come from the files (already 0..205) and are relabelled 0..N-1 in sorted
    order, which changes nothing unless an identity lacks a modality.

    Protocol: one model per trial, tested on that trial's test files in both
    directions, visible->thermal (the headline) and thermal->visible, 2,060
    queries against all 2,060 images of the other modality; nothing is
    removed from the gallery, plain CMC.
    """

    label = "RegDB"
    layout = "Visible/, Thermal/ and idx/{train,test}_{visible,thermal}_<trial>.txt"
    headline = "visible-to-thermal"
    split_trials = 10
    # The name kept in results since the first version of this reader.
    split_key = "regdb_trial"
    rule = RankingRule("regdb")
    official_counts = OFFICIAL_COUNTS
    id_files = ("idx/*.txt",)

    def title(self) -> str:
        return f"RegDB trial {self.cfg.DATA.TRIAL}"

    def _split(self, kind: str, modality: int) -> list[ImageRecord]:
        trial = self.cfg.DATA.TRIAL
        band = "visible" if modality == VISIBLE else "thermal"
        cam = VISIBLE_CAM if modality == VISIBLE else THERMAL_CAM
        list_path = os.path.join(self.root, "idx", f"{kind}_{band}_{trial}.txt")
        entries = read_list_file(list_path, self.root, self.title())
        return [ImageRecord(e.path, e.label, cam, modality) for e in entries]

    def _load(self) -> None:
        if self.need_train:
            self.train = keep_two_modality_ids(
                self._split("train", VISIBLE) + self._split("train", INFRARED),
                f"{self.title()} training set")
        self.test_sets = {"visible": self._split("test", VISIBLE),
                          "infrared": self._split("test", INFRARED)}

    def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]], split: str = "test",
                 trials: Sequence[int] | None = None, monitor: bool = False,
                 **options: Any) -> tuple[list[Setting], dict[str, Any]]:
        """Both directions on the whole sets; the trial is the split (DATA.TRIAL)."""
        trial = cfg.DATA.TRIAL
        return (both_directions(("visible", "infrared"), self.rule, (trial,),
                                labels={"infrared": "thermal"}),
                {self.split_key: trial})

    @classmethod
    def describe_protocol(cls, info: dict[str, Any]) -> str:
        trials = info[cls.split_key]
        if isinstance(trials, list):
            return f"RegDB trials {', '.join(map(str, trials))}, one model each"
        return f"RegDB trial {trials}"
