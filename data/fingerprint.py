"""Dataset fingerprint: what a copy of a dataset holds, and how it compares with the release.

``dataset_fingerprint(dataset)`` counts the images of every split by modality
and camera and the identities, hashes the sorted relative list of image files
under the root and the split/id files, and compares the counts with the
official release's where the dataset class declares them
(``official_counts``, ``expected_cameras``; ``id_files`` names its split/id
files). Any mismatch becomes a plain warning line; a copy whose counts all
differ (a synthetic dataset, a small subset) gets one line, not one per count.

Generic: it reads only the reader's attributes (``root``, ``train``,
``val_sets``, ``test_sets``, ``need_train``, ``has_val``, ``label`` and the
declarations above), never a dataset's name.
"""
from __future__ import annotations

import glob
import hashlib
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from utils.constants import INFRARED, VISIBLE

MODALITIES = {VISIBLE: "visible", INFRARED: "infrared"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class OfficialCount:
    """One count of the official release.

    Attributes:
        split: ``train`` or ``test`` (the union of the test sets).
        field: ``ids``, ``images``, ``visible`` or ``infrared`` (images of that modality).
        value: the release's count.
        source: where the number comes from.
    """

    split: str
    field: str
    value: int
    source: str


def split_counts(records: Iterable[Any]) -> dict[str, Any]:
    """Images and identities of records (``pid``, ``cam``, ``modality``), per modality and
    camera: ``{"images", "ids", "visible": {"images", "ids", "cameras": {cam: n}},
    "infrared": {...}}`` (camera keys are strings, as JSON keeps them)."""
    records = list(records)
    out: dict[str, Any] = {"images": len(records), "ids": len({r.pid for r in records})}
    for modality, name in MODALITIES.items():
        mine = [r for r in records if r.modality == modality]
        cams = Counter(r.cam for r in mine)
        out[name] = {"images": len(mine), "ids": len({r.pid for r in mine}),
                     "cameras": {str(c): cams[c] for c in sorted(cams)}}
    return out


def image_files(root: str) -> list[str]:
    """Every image file under ``root``, as sorted relative POSIX paths."""
    out = []
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        rel = os.path.relpath(folder, root)
        for f in files:
            if f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(f if rel == "." else f"{rel}/{f}".replace(os.sep, "/"))
    return sorted(out)


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_files(root: str, patterns: Sequence[str]) -> dict[str, str]:
    """``{relative path: SHA-256 of its bytes}`` of the files matching ``patterns``
    (globs relative to ``root``), in sorted order."""
    paths = {p for pattern in patterns for p in glob.glob(os.path.join(root, pattern))
             if os.path.isfile(p)}
    return {os.path.relpath(p, root).replace(os.sep, "/"): _sha256_file(p)
            for p in sorted(paths)}


def list_hash(lines: Iterable[str]) -> str:
    """SHA-256 of the lines joined by newlines (one trailing newline)."""
    return hashlib.sha256(("\n".join(lines) + "\n").encode("utf-8")).hexdigest()


def _describe(split: str, field: str, value: int) -> str:
    noun = {"ids": "identities", "images": "images"}.get(field, f"{field} images")
    return f"{split}: {value:,} {noun}"


def compare_counts(label: str, splits: dict[str, dict[str, Any]],
                   official: Sequence[OfficialCount],
                   cameras: dict[tuple[str, str], tuple[int, ...]]
                   ) -> tuple[list[dict[str, Any]], list[str]]:
    """Compare a copy's counts with the release's.

    Args:
        label: the dataset's name in messages.
        splits: :func:`split_counts` by split name (``train``, ``test``); a split
            left out is not compared.
        official: the release's counts.
        cameras: ``{(split, modality): cameras}`` expected to hold images.

    Returns:
        (checks, warnings): one ``{"split", "field", "copy", "release", "source"}``
        per compared count; the warning lines (one in all when more than one count
        differs, plus one per expected camera that holds no image).
    """
    checks, differ = [], []
    for c in official:
        if c.split not in splits:
            continue
        entry = splits[c.split]
        have = entry[c.field]["images"] if c.field in ("visible", "infrared") else entry[c.field]
        checks.append({"split": c.split, "field": c.field, "copy": have, "release": c.value,
                       "source": c.source})
        if have != c.value:
            differ.append(f"{_describe(c.split, c.field, have)}, the release has {c.value:,}")
    warnings = []
    if len(differ) == 1:
        warnings.append(f"{label} {differ[0]}")
    elif differ:
        warnings.append(f"{label}: {len(differ)} of {len(checks)} counts differ from the "
                        f"official release (e.g. {differ[0]}): a synthetic dataset or a "
                        "partial copy?")
    for (split, modality), cams in cameras.items():
        if split not in splits:
            continue
        have = splits[split][modality]["cameras"]
        for cam in cams:
            if not have.get(str(cam)):
                warnings.append(f"{label} {split} {modality} has 0 images in cam{cam}: "
                                "an incomplete copy?")
    return checks, warnings


def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """The fingerprint of a dataset reader (module docstring).

    Training counts are compared only when the whole training set is trained
    on (no identities held out for validation).

    Returns:
        ``{"dataset", "root", "splits": {name: split_counts}, "image_files": {"count",
        "sha256"}, "split_files": {"files": {path: sha256}, "sha256"}, "official":
        [checks], "warnings": [lines]}``; ``split_files.sha256`` hashes the
        ``path sha256`` lines.
    """
    splits: dict[str, dict[str, Any]] = {}
    if dataset.need_train:
        splits["train"] = split_counts(dataset.train)
    if dataset.val_sets:
        splits["val"] = split_counts(r for recs in dataset.val_sets.values() for r in recs)
    splits["test"] = split_counts(r for recs in dataset.test_sets.values() for r in recs)
    compared = {k: v for k, v in splits.items() if k != "train" or not dataset.has_val}
    checks, warnings = compare_counts(dataset.label, compared, dataset.official_counts,
                                      dataset.expected_cameras)
    files = image_files(dataset.root)
    listed = split_files(dataset.root, dataset.id_files)
    return {"dataset": dataset.name, "root": dataset.root, "splits": splits,
            "image_files": {"count": len(files), "sha256": list_hash(files)},
            "split_files": {"files": listed,
                            "sha256": list_hash(f"{p} {h}" for p, h in listed.items())},
            "official": checks, "warnings": warnings}


def format_fingerprint(fp: dict[str, Any]) -> str:
    """Two lines for a log: the counts, then the hashes."""
    counts = "; ".join(
        f"{name} {s['ids']} ids, {s['visible']['images']} visible + "
        f"{s['infrared']['images']} infrared images" for name, s in fp["splits"].items())
    checked = fp["official"]
    agree = sum(c["copy"] == c["release"] for c in checked)
    official = (f"{agree}/{len(checked)} counts as the official release" if checked
                else "no official counts known")
    return (f"dataset {fp['dataset']}: {counts} ({official})\n"
            f"dataset files: {fp['image_files']['count']} images, sha256 "
            f"{fp['image_files']['sha256'][:16]}; {len(fp['split_files']['files'])} split/id "
            f"files, sha256 {fp['split_files']['sha256'][:16]}")
