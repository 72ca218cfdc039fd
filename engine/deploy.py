"""A trained model on images outside any dataset: load, extract features, search a gallery.

``load_trained(path)`` reads one of this project's checkpoints with its saved
config; features are the checkpoint's test feature (TEST.FEAT, VIEWS,
NORM_EACH, PART_WEIGHTS, FLIP) and rankings use its TEST.NORM and
TEST.DISTANCE, as ``test.py`` does (k-reciprocal re-ranking is not applied).
Every image goes through the stream of the modality given for its side.

``extract`` writes the ``.npz`` layout of ``test.py --save_features`` for one
set named after the modality (``visible`` or ``infrared``)::

    <set>_feat (N, D) float32, <set>_path (N,) str, <set>_pid (N,) int (-1: unknown),
    <set>_cam (N,) int (0), checkpoint () str, model_sha256 () str, config () str

``search`` ranks a gallery for each query, prints the top k, writes one ranked
sheet per query and ``ranking.json``; gallery features are cached in
``<out>/gallery_cache/`` under a key of the checkpoint's bytes, the config, the
modality and every gallery file's path, size and modification time.
"""
from __future__ import annotations

import glob
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from yacs.config import CfgNode

from data.base import IMAGE_EXTENSIONS, ImageRecord, verify_images
from data.build import make_test_loader
from engine.checkpoint import load_checkpoint
from engine.distributed import resolve_device
from engine.inference import extract_features
from engine.tester import load_model
from modeling import VIReIDNet
from utils.config import config_from_ini_text, config_to_ini, with_values
from utils.constants import INFRARED, VISIBLE
from utils.distances import feature_distance
from utils.errors import UserError
from utils.io import atomic_write_bytes, atomic_write_text
from utils.registry import Registry
from utils.visualize import ranked_sheet

MODALITIES: Registry = Registry("--modality", "modality", config_keys=())
MODALITIES.update({"visible": VISIBLE, "infrared": INFRARED})
CACHE_DIR = "gallery_cache"


@dataclass
class Trained:
    """A checkpoint ready to use: config, eval-mode network on its device, identity."""

    path: str
    cfg: CfgNode
    model: VIReIDNet
    device: torch.device
    sha256: str


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_trained(path: str, device: str | None = None) -> Trained:
    """Load a checkpoint of this project with its saved config, in eval mode.

    Args:
        path: the ``.pth`` file.
        device: None = the config's MODEL.DEVICE; else ``cpu``, ``cuda``, ``auto``...

    Raises:
        UserError: not one of this project's checkpoints, or weights that do not fit.
    """
    ckpt = load_checkpoint(path)
    cfg = config_from_ini_text(str(ckpt["config"]), where=f"{path} (saved config)")
    # The weights come from the checkpoint; images outside a dataset are not cached.
    cfg = with_values(cfg, MODEL__PRETRAIN_PATH="", MODEL__DEVICE=device or cfg.MODEL.DEVICE,
                      DATA__CACHE=False)
    dev = resolve_device(cfg)
    model = load_model(cfg, ckpt, path).to(dev).eval()
    return Trained(path, cfg, model, dev, file_sha256(path))


def modality_id(name: str, flag: str = "--modality") -> int:
    """``visible`` -> 0, ``infrared`` -> 1 (case-insensitive).

    Raises:
        UserError: another name.
    """
    key = name.strip().lower()
    if key not in MODALITIES:
        raise UserError(MODALITIES.unknown(name, key=flag))
    return MODALITIES[key]


def collect_images(specs: list[str], flag: str, exclude: str | os.PathLike | None = None
                   ) -> list[str]:
    """The image files named by ``specs``: files, folders (recursive) or glob patterns.

    Folders and patterns contribute their files with an image extension, sorted,
    except those under ``exclude`` (a search's output folder: its sheets are not
    gallery images); a file named directly is taken as it is (and must decode).
    Duplicates are dropped, first occurrence kept. Every header is opened, so a file
    that is not an image is named before any feature is extracted.

    Raises:
        UserError: a path that does not exist, a folder or pattern without images, a
            file that is not an image.
    """
    out: list[str] = []
    skip = Path(exclude).resolve() if exclude is not None else None

    def kept(path: str) -> bool:
        return skip is None or not Path(path).resolve().is_relative_to(skip)

    for spec in specs:
        if glob.has_magic(spec):
            found = [p for p in glob.glob(spec, recursive=True) if os.path.isfile(p)]
            images = sorted(p for p in found if p.lower().endswith(IMAGE_EXTENSIONS)
                            and kept(p))
            what = f"the pattern {spec}"
        elif os.path.isdir(spec):
            images = sorted(str(p) for p in Path(spec).rglob("*")
                            if p.is_file() and p.name.lower().endswith(IMAGE_EXTENSIONS)
                            and kept(str(p)))
            what = f"the folder {spec}"
        elif os.path.isfile(spec):
            images, what = [spec], spec
        else:
            raise UserError(f"{flag} {spec}: no such file, folder or pattern")
        if not images:
            raise UserError(f"{flag} {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) in "
                            f"{what}")
        out += images
    out = list(dict.fromkeys(out))
    verify_images(ImageRecord(p, -1, 0, 0) for p in out)
    return out


def check_writable_dir(folder: str | os.PathLike, flag: str) -> Path:
    """Create ``folder`` if needed and make sure a file can be written in it.

    Raises:
        UserError: it cannot be created or written.
    """
    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UserError(f"{flag} {folder}: cannot write there ({exc.strerror or exc})") from None
    return path


def image_features(trained: Trained, paths: list[str], modality: int,
                   split: str = "images") -> torch.Tensor:
    """(N, D') test features of ``paths``, every image through ``modality``'s stream."""
    cfg = trained.cfg
    records = [ImageRecord(p, -1, 0, modality) for p in paths]
    loader = make_test_loader(cfg, records, split=split, verbose=False)
    return extract_features(trained.model, loader, len(records), trained.device,
                            flip=cfg.TEST.FLIP, amp=cfg.TRAIN.AMP,
                            channels_last=cfg.TRAIN.CHANNELS_LAST,
                            amp_type=cfg.TRAIN.AMP_DTYPE).float().cpu()


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def extract(trained: Trained, paths: list[str], modality: int, out: str | os.PathLike
            ) -> dict[str, np.ndarray]:
    """Write the features of ``paths`` to ``out`` (the layout of the module docstring).

    Returns:
        The arrays written.
    """
    name = next(k for k, v in MODALITIES.items() if v == modality)
    feats = image_features(trained, paths, modality, split=name)
    arrays = {f"{name}_feat": feats.numpy(), f"{name}_path": np.array(paths),
              f"{name}_pid": np.full(len(paths), -1), f"{name}_cam": np.zeros(len(paths), int),
              "checkpoint": np.array(str(trained.path)), "model_sha256": np.array(trained.sha256),
              "config": np.array(config_to_ini(trained.cfg))}
    atomic_write_bytes(out, _npz_bytes(arrays))
    return arrays


def cache_key(trained: Trained, paths: list[str], modality: int) -> str:
    """Hex key of a gallery's features: the model's bytes and config, the modality, and
    each file's absolute path, size and modification time."""
    digest = hashlib.sha256()
    digest.update(f"{trained.sha256}\n{config_to_ini(trained.cfg)}\n{modality}\n".encode())
    for p in paths:
        st = os.stat(p)
        digest.update(f"{os.path.abspath(p)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def gallery_features(trained: Trained, paths: list[str], modality: int, out: Path
                     ) -> tuple[torch.Tensor, bool]:
    """The gallery's features from the cache under ``out``, or extracted and cached.

    Returns:
        ((G, D') features, True when read from the cache).
    """
    key = cache_key(trained, paths, modality)
    cached = out / CACHE_DIR / f"{key[:32]}.npz"
    if cached.is_file():
        try:
            with np.load(cached) as f:
                if str(f["key"]) == key and list(f["path"]) == paths:
                    return torch.from_numpy(f["feat"].astype(np.float32)), True
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file: extracted again and replaced below
    feats = image_features(trained, paths, modality, split="gallery")
    atomic_write_bytes(cached, _npz_bytes({"key": np.array(key), "path": np.array(paths),
                                           "feat": feats.numpy()}))
    return feats, False


@dataclass
class SearchResult:
    """A search: ``ranking`` as written to ``ranking.json`` and what was written."""

    ranking: dict[str, Any]
    sheets: list[Path] = field(default_factory=list)
    from_cache: bool = False


def _sheet_name(index: int, path: str) -> str:
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(path).stem)[:60]
    return f"ranked_{index:03d}_{stem}.png"


def search(trained: Trained, queries: list[str], gallery: list[str], query_modality: int,
           gallery_modality: int, out: str | os.PathLike, top: int = 10) -> SearchResult:
    """Rank ``gallery`` for every query; write the sheets and ``ranking.json`` to ``out``.

    Args:
        trained: from :func:`load_trained`.
        queries, gallery: image files (see :func:`collect_images`).
        query_modality, gallery_modality: the stream each side goes through.
        out: output folder (created), also holding the gallery cache.
        top: gallery entries kept per query.

    Returns:
        The ranking (``{"queries": [{"query", "sheet", "top": [{"rank", "path",
        "distance"}]}], ...}``), the sheet paths, whether the gallery came from the cache.
    """
    if top < 1:
        raise UserError(f"--top {top}: expected a number of gallery images >= 1")
    out = check_writable_dir(out, "--out")
    g_feat, from_cache = gallery_features(trained, gallery, gallery_modality, out)
    q_feat = image_features(trained, queries, query_modality, split="query")
    cfg = trained.cfg
    dist = feature_distance(q_feat, g_feat, cfg.TEST.DISTANCE, cfg.TEST.NORM).numpy()
    k = min(top, len(gallery))
    names = {v: n for n, v in MODALITIES.items()}
    ranking: dict[str, Any] = {
        "checkpoint": str(trained.path), "model_sha256": trained.sha256,
        "query_modality": names[query_modality], "gallery_modality": names[gallery_modality],
        "distance": cfg.TEST.DISTANCE, "normalized": bool(cfg.TEST.NORM),
        "flip": bool(cfg.TEST.FLIP), "gallery_size": len(gallery), "queries": []}
    result = SearchResult(ranking, from_cache=from_cache)
    for i, qpath in enumerate(queries):
        order = np.argsort(dist[i], kind="stable")[:k]
        sheet = out / _sheet_name(i, qpath)
        ranked_sheet([qpath], None, gallery, None, dist[i:i + 1], sheet, topk=k)
        result.sheets.append(sheet)
        ranking["queries"].append({
            "query": qpath, "sheet": sheet.name,
            "top": [{"rank": r + 1, "path": gallery[g], "distance": round(float(dist[i, g]), 6)}
                    for r, g in enumerate(order)]})
    atomic_write_text(out / "ranking.json", json.dumps(ranking, indent=2) + "\n")
    return result


def format_ranking(ranking: dict[str, Any]) -> str:
    """The top k of every query as text: ``rank  distance  path`` lines under each query."""
    lines = []
    for q in ranking["queries"]:
        lines.append(f"query {q['query']} ({ranking['query_modality']}) -> "
                     f"{ranking['gallery_modality']} gallery, {ranking['distance']} distance")
        lines += [f"  {e['rank']:>3}  {e['distance']:.4f}  {e['path']}" for e in q["top"]]
    return "\n".join(lines)
