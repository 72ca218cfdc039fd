"""Image records, split-file parsing and the checks every dataset reader shares."""
from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from PIL import Image
from yacs.config import CfgNode

from data.fingerprint import OfficialCount, dataset_fingerprint
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.registry import Registry

if TYPE_CHECKING:
    from data.protocols import Setting

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


class ImageRecord(NamedTuple):
    """One image: absolute path, person id, camera id and modality (VISIBLE/INFRARED)."""

    path: str
    pid: int
    cam: int
    modality: int


class ListEntry(NamedTuple):
    """One parsed line of a ``relative/path label`` split file."""

    path: str
    label: int
    line: int
    rel: str


def read_list_file(list_path: str, root: str, what: str) -> list[ListEntry]:
    """Parse a ``relative/path label`` split file and check that each image exists.

    Args:
        list_path: the split file.
        root: folder the relative paths start from.
        what: how to name the split in errors (e.g. ``RegDB trial 3``).

    Raises:
        UserError: the file is missing, a line does not parse, an image is missing,
            or the file lists no image.
    """
    if not os.path.isfile(list_path):
        raise UserError(f"{what}: split file {list_path} not found")
    entries = []
    with open(list_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            line = raw.strip()
            if not line:
                continue
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not re.fullmatch(r"\d+", parts[1]):
                raise UserError(f"{list_path} line {n}: expected '<relative image path> "
                                f"<integer label>', got {line!r}")
            rel = parts[0]
            path = os.path.join(root, rel)
            if not os.path.isfile(path):
                raise UserError(f"{list_path} line {n}: image {path} not found")
            entries.append(ListEntry(path, int(parts[1]), n, rel))
    if not entries:
        raise UserError(f"{what}: split file {list_path} lists no images")
    return entries


def read_id_file(id_path: str, what: str) -> list[int]:
    """Parse a file of comma-separated person ids (one or more lines), sorted and unique.

    Raises:
        UserError: missing file, a token that is not an integer, or no id at all.
    """
    if not os.path.isfile(id_path):
        raise UserError(f"{what}: id file {id_path} not found")
    ids: set[int] = set()
    with open(id_path, encoding="utf-8") as f:
        for n, raw in enumerate(f, start=1):
            for token in re.split(r"[,\s]+", raw.strip()):
                if not token:
                    continue
                if not token.isdigit():
                    raise UserError(f"{id_path} line {n}: expected comma-separated integer "
                                    f"ids, got {token!r}")
                ids.add(int(token))
    if not ids:
        raise UserError(f"{what}: id file {id_path} lists no ids")
    return sorted(ids)


def list_images(folder: str) -> list[str]:
    """Image file names in ``folder`` in sorted order (never the file system's order)."""
    return sorted(f for f in os.listdir(folder) if f.lower().endswith(IMAGE_EXTENSIONS))


def verify_images(records: Iterable[ImageRecord]) -> None:
    """Open every image's header; cheap, catches files that are not images.

    Raises:
        UserError: naming the first file that does not open as an image.
    """
    for rec in records:
        try:
            with Image.open(rec.path) as im:
                im.verify()
        except FileNotFoundError:
            raise UserError(f"image {rec.path} not found") from None
        except Exception as exc:  # PIL raises many types for a broken file
            raise UserError(f"image {rec.path} does not decode as an image "
                            f"({type(exc).__name__}: {exc})") from None


def keep_two_modality_ids(records: Sequence[ImageRecord], what: str) -> list[ImageRecord]:
    """Drop identities seen in only one modality and relabel the rest 0..N-1 (sorted pid order).

    Dropped identities are reported in one warning line.

    Raises:
        UserError: no identity has both modalities.
    """
    modalities: dict[int, set[int]] = defaultdict(set)
    for rec in records:
        modalities[rec.pid].add(rec.modality)
    keep = sorted(p for p, m in modalities.items() if m == {VISIBLE, INFRARED})
    dropped = sorted(set(modalities) - set(keep))
    if dropped:
        shown = ", ".join(str(p) for p in dropped[:10]) + (" ..." if len(dropped) > 10 else "")
        logger.warning("%s: %d identities have images in only one modality and are left out "
                       "of training: %s", what, len(dropped), shown)
    if not keep:
        raise UserError(f"{what}: no identity has images in both modalities")
    kept = set(keep)
    return relabel([r for r in records if r.pid in kept])


def sort_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Sort by (cam, pid, file name)."""
    return sorted(records, key=lambda r: (r.cam, r.pid, os.path.basename(r.path), r.path))


def relabel(records: Sequence[ImageRecord]) -> list[ImageRecord]:
    """Records with their pids replaced by 0..N-1 in sorted pid order."""
    label = {p: i for i, p in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=label[r.pid]) for r in records]


def by_modality(records: Iterable[ImageRecord]) -> dict[str, list[ImageRecord]]:
    """``{'visible': [...], 'infrared': [...]}``: the uniform names of evaluation sets."""
    records = list(records)
    return {"visible": [r for r in records if r.modality == VISIBLE],
            "infrared": [r for r in records if r.modality == INFRARED]}


@dataclass(frozen=True)
class ProtocolOption:
    """A protocol option a dataset offers on ``test.py``'s command line (``--name``).

    Attributes:
        name: the flag, without dashes (``mode``).
        help: its help line.
        choices: the allowed values.
        type: the value's type (``str`` or ``int``).
        settings_arg: the ``settings`` keyword it narrows to one value (``modes``),
            or empty.
        config_key: the config key it sets instead (``SYSUMM.GALLERY``), or empty.
    """

    name: str
    help: str
    choices: tuple[Any, ...]
    type: type = str
    settings_arg: str = ""
    config_key: str = ""


class VIReIDDataset:
    """The dataset contract: records, evaluation sets and the protocol that reads them.

    A reader subclasses this, registers itself in ``data.DATASETS`` and fills
    ``train`` and ``test_sets`` in ``_load`` (and ``val_sets`` when it has a
    validation split of its own). The engine asks the dataset, never its name:

    - ``eval_sets(split)``: the record lists features are extracted from, by the
      uniform names ``visible`` and ``infrared``;
    - ``settings(cfg, sets, ...)``: the protocol's :class:`data.protocols.Setting` s
      over those sets, with a description of the variant for the results;
    - ``headline``: the setting used for model selection and summaries;
    - ``split_trials``: > 0 when the dataset comes in that many fixed train/test
      splits (DATA.TRIAL), one model trained per split (RegDB); 0 when trials
      are gallery samples of one split (TEST.NUM_TRIALS);
    - ``options``: the protocol options it adds to ``test.py``'s command line
      (:class:`ProtocolOption`: SYSU-MM01's ``--mode``, ``--shots``, ``--gallery``);
    - ``has_val``: whether identities are held out of training for validation
      (DATA.VAL_IDS for every dataset, or a split of the dataset's own).

    Attributes:
        name: the registry name (set by ``data.DATASETS`` registration).
        root: dataset folder.
        train: training records (both modalities, pids relabelled 0..N-1).
        test_sets, val_sets: evaluation record lists by set name.
        num_classes: number of training identities (0 when built without training).
    """

    name = ""
    label = ""  # how messages name the dataset (default: its name)
    layout = ""  # one line describing the expected top-level layout, for errors
    headline = ""
    split_trials = 0
    split_key = "split_trial"  # the results' protocol key holding the split trial
    options: tuple[ProtocolOption, ...] = ()
    val_hint = ""  # how else this dataset can provide a validation split, for errors
    # The official release's counts and the cameras each split's modality must have images
    # in ({(split, modality): cameras}), for the fingerprint; empty = unknown.
    official_counts: tuple[OfficialCount, ...] = ()
    expected_cameras: dict[tuple[str, str], tuple[int, ...]] = {}
    id_files: tuple[str, ...] = ()  # globs (relative to the root) of the split/id files

    def __init__(self, root: str, cfg: CfgNode, verbose: bool = True,
                 need_train: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.cfg = cfg
        self.need_train = need_train
        self.train: list[ImageRecord] = []
        self.test_sets: dict[str, list[ImageRecord]] = {}
        self.val_sets: dict[str, list[ImageRecord]] = {}
        if self.split_trials and not 1 <= cfg.DATA.TRIAL <= self.split_trials:
            raise UserError(f"DATA.TRIAL = {cfg.DATA.TRIAL}: {self.label} has splits "
                            f"1..{self.split_trials}")
        if not os.path.isdir(self.root):
            raise UserError(f"{self.title()}: dataset root {self.root} does not exist or is "
                            f"not a folder (expected {self.layout})")
        self._load()
        if need_train and cfg.DATA.VAL_IDS:
            self._hold_out(cfg.DATA.VAL_IDS)
        self.num_classes = len({r.pid for r in self.train})
        if cfg.DATA.VERIFY_IMAGES:
            for _, records in self.subsets():
                verify_images(records)
        if verbose:
            print(self.describe())

    def _load(self) -> None:
        raise NotImplementedError

    def _hold_out(self, n: int) -> None:
        """Move ``n`` training identities (both modalities) to ``val_sets``.

        The identities are a fixed draw (seed 0, independent of TRAIN.SEED) so
        that runs with different seeds select on the same validation split.
        """
        if self.val_sets:
            raise UserError(f"DATA.VAL_IDS = {n}: {self.title()} already holds out its own "
                            "val split; set DATA.VAL_IDS = 0 or use the training ids for it")
        ids = sorted({r.pid for r in self.train})
        if n > len(ids) - 2:
            raise UserError(f"DATA.VAL_IDS = {n}: the training set of {self.title()} has "
                            f"{len(ids)} identities; at least 2 must remain for training")
        held = set(np.random.default_rng(0).choice(ids, n, replace=False).tolist())
        self.val_sets = by_modality(sort_records(r for r in self.train if r.pid in held))
        self.train = relabel([r for r in self.train if r.pid not in held])

    def title(self) -> str:
        """Dataset name (with its split choice) for messages."""
        return self.label

    @property
    def has_val(self) -> bool:
        """Whether identities are held out of training for validation."""
        return bool(self.val_sets)

    def eval_sets(self, split: str = "test") -> dict[str, list[ImageRecord]]:
        """The record lists of ``split`` (``test`` or ``val``) by set name.

        Raises:
            UserError: ``val`` asked of a dataset without a validation split.
        """
        if split == "test":
            return self.test_sets
        if not self.val_sets:
            hint = f" ({self.val_hint})" if self.val_hint else ""
            raise UserError(f"{self.title()} has no validation split: set DATA.VAL_IDS to hold "
                            f"identities out of training{hint}")
        return self.val_sets

    def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]], split: str = "test",
                 trials: Sequence[int] | None = None, monitor: bool = False,
                 **options: Any) -> tuple[list[Setting], dict[str, Any]]:
        """The protocol's settings over ``sets`` and a description of its variant.

        Args:
            cfg: the configuration (TEST.* and the dataset's own keys).
            sets: from :meth:`eval_sets`.
            split: ``test`` or ``val`` (a protocol may sample a validation gallery
                differently, e.g. without official test-id files).
            trials: 1-based gallery trials (default 1..TEST.NUM_TRIALS where the
                protocol samples galleries).
            monitor: only the settings worth computing at every periodic
                evaluation during training (the headline at least).
            options: the ``settings_arg`` keywords of the dataset's ``options``
                (e.g. ``modes``, ``shots``).

        Returns:
            (settings, info): the headline setting first; ``info`` is written into
            the results' ``protocol`` record.
        """
        raise NotImplementedError

    @classmethod
    def describe_protocol(cls, info: dict[str, Any]) -> str:
        """The dataset's part of the one-line protocol description of results."""
        if "gallery_sampling" not in info:
            return ""
        source = f" ({info['perm_path']})" if info.get("perm_path") else ""
        return f"gallery {info['gallery_sampling']}{source}, {info['trial_note']}"

    def subsets(self) -> list[tuple[str, list[ImageRecord]]]:
        """Named record lists shown by ``describe``: training, validation and test sets."""
        out = [("train", self.train)] if self.need_train else []
        out += [(f"val {k}", v) for k, v in self.val_sets.items()]
        return out + [(f"test {k}", v) for k, v in self.test_sets.items()]

    def fingerprint(self) -> dict[str, Any]:
        """Counts, file hashes and the comparison with the official release
        (:func:`data.fingerprint.dataset_fingerprint`)."""
        return dataset_fingerprint(self)

    def describe(self) -> str:
        """Statistics table: ids and images per modality and camera of each subset."""
        rows = [("subset", "ids", "images", "visible", "infrared", "images per camera")]
        for name, records in self.subsets():
            mod = Counter(r.modality for r in records)
            cams = Counter(r.cam for r in records)
            rows.append((name, str(len({r.pid for r in records})), str(len(records)),
                         str(mod[VISIBLE]), str(mod[INFRARED]),
                         " ".join(f"cam{c}:{cams[c]}" for c in sorted(cams))))
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines = [f"{self.title()} at {self.root}"]
        for row in rows:
            cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, 5)]
            lines.append("  " + "  ".join(cells) + "  " + row[5])
        return "\n".join(lines)


# DATA.DATASET_NAME -> reader class; the config's valid dataset names are these keys.
# ``data/__init__.py`` imports every module of the package, so a reader in a new
# file registers itself with the decorator below.
DATASETS: Registry = Registry("DATA.DATASET_NAME", "dataset")


def register_dataset(name: str):
    """Class decorator: register a ``VIReIDDataset`` under ``name`` (also its ``name``)."""
    def add(cls: type[VIReIDDataset]) -> type[VIReIDDataset]:
        cls.name = name
        cls.label = cls.label or name
        return DATASETS.register(name)(cls)
    return add
