"""Image records, split-file parsing and the checks every dataset reader shares."""
from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import NamedTuple

from PIL import Image
from yacs.config import CfgNode

from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

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
    label = {p: i for i, p in enumerate(keep)}
    return [r._replace(pid=label[r.pid]) for r in records if r.pid in label]


def images_by_cam_pid(records: Iterable[ImageRecord]) -> dict[tuple[int, int], list[ImageRecord]]:
    """Group records by (cam, pid); each list sorted by file name.

    ``groups[(cam, pid)][i - 1]`` is "the i-th image" of that person in that camera,
    the indexing of the official SYSU-MM01 permutation file.
    """
    groups: dict[tuple[int, int], list[ImageRecord]] = defaultdict(list)
    for rec in records:
        groups[(rec.cam, rec.pid)].append(rec)
    return {k: sorted(v, key=lambda r: os.path.basename(r.path)) for k, v in sorted(groups.items())}


def sort_records(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Sort by (cam, pid, file name)."""
    return sorted(records, key=lambda r: (r.cam, r.pid, os.path.basename(r.path), r.path))


class VIReIDDataset:
    """Base of the readers: root check, image check and statistics table.

    Subclasses fill ``train`` and their test lists in ``_load`` and name their
    subsets in ``subsets``.

    Attributes:
        name: short dataset name.
        root: dataset folder.
        train: training records (both modalities, pids relabelled 0..N-1).
        num_classes: number of training identities (0 when built without training).
    """

    name = ""
    layout = ""  # one line describing the expected top-level layout, for errors

    def __init__(self, root: str, cfg: CfgNode, verbose: bool = True,
                 need_train: bool = True) -> None:
        self.root = os.path.abspath(os.path.expanduser(str(root)))
        self.cfg = cfg
        self.need_train = need_train
        self.train: list[ImageRecord] = []
        if not os.path.isdir(self.root):
            raise UserError(f"{self.title()}: dataset root {self.root} does not exist or is "
                            f"not a folder (expected {self.layout})")
        self._load()
        self.num_classes = len({r.pid for r in self.train})
        if cfg.DATA.VERIFY_IMAGES:
            for _, records in self.subsets():
                verify_images(records)
        if verbose:
            print(self.describe())

    def _load(self) -> None:
        raise NotImplementedError

    def title(self) -> str:
        """Dataset name (with its split choice) for messages."""
        return self.name

    def subsets(self) -> list[tuple[str, list[ImageRecord]]]:
        """Named record lists shown by ``describe``; training first when loaded."""
        return [("train", self.train)] if self.need_train else []

    @staticmethod
    def images_by_cam_pid(records: Iterable[ImageRecord]
                          ) -> dict[tuple[int, int], list[ImageRecord]]:
        """See :func:`data.base.images_by_cam_pid`."""
        return images_by_cam_pid(records)

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
