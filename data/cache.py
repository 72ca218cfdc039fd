"""Decoded-image cache: every image decoded and resized once into a memory-mapped store.

A store is one ``.npy`` file holding an (N, H, W, 3) uint8 array, row i being
``load_image(paths[i], (H, W), resize)``. Its file name carries the dataset,
the split, the size, the resize filter (left out for the default, bilinear), a
hash of the path list and a hash of every file's size and modification time, so
a changed, added or removed source file selects a new store and the outdated
one is deleted, and a store is never read for the other filter. Stores are
written to a temporary file and renamed, so an interrupted build never leaves a
partial store behind.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from yacs.config import CfgNode

from data.transforms import load_image
from utils.errors import UserError


def cache_folder(cfg: CfgNode) -> Path:
    """DATA.CACHE_DIR, else $VIREID_CACHE, else ~/.cache/vireid."""
    folder = cfg.DATA.CACHE_DIR or os.environ.get("VIREID_CACHE", "") or "~/.cache/vireid"
    return Path(os.path.expanduser(folder))


def fingerprint(paths: Sequence[str]) -> tuple[str, str]:
    """(hash of the ordered path list, hash of every file's size and mtime)."""
    names, stats = hashlib.sha1(), hashlib.sha1()
    for p in paths:
        names.update(p.encode("utf-8") + b"\0")
        try:
            st = os.stat(p)
        except FileNotFoundError:
            raise UserError(f"image {p} not found") from None
        stats.update(f"{st.st_size}:{st.st_mtime_ns};".encode())
    return names.hexdigest()[:12], stats.hexdigest()[:12]


class DecodedStore:
    """Read-only view of a store; the memory map is opened lazily in each process.

    ``store[i]`` is the (H, W, 3) uint8 image of row i, a read-only view of the map.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...]) -> None:
        self.path = str(path)
        self.shape = shape
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> np.ndarray:
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return np.asarray(self._array[index])  # plain ndarray view, not np.memmap

    def __getstate__(self) -> dict:
        # Worker processes reopen the map instead of receiving a copy of the array.
        return {"path": self.path, "shape": self.shape, "_array": None}


def _valid(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        arr = np.load(path, mmap_mode="r")
    except (OSError, ValueError):
        return False
    return arr.shape == shape and arr.dtype == np.uint8


def _decode_into(path: str, paths: Sequence[str], size: tuple[int, int], resize: str,
                 shape: tuple[int, ...], threads: int) -> None:
    """Decode ``paths`` into a new .npy memory map at ``path``, in ``threads`` threads."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)

    def fill(i: int) -> None:
        out[i] = load_image(paths[i], size, resize)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(fill, range(len(paths))))  # re-raises the first decoding error
    out.flush()


def open_store(paths: Sequence[str], size: tuple[int, int], folder: str | os.PathLike,
               dataset: str, split: str, threads: int = 0,
               verbose: bool = True, resize: str = "bilinear") -> DecodedStore:
    """Return the store of ``paths`` at ``size``, building it first if needed.

    Args:
        paths: image files; row i of the store is ``paths[i]``.
        size: (height, width) every image is resized to.
        folder: cache folder.
        dataset, split: names used in the store's file name.
        threads: decoding threads for the build (0 = one per available core).
        verbose: print a line when a store is built.
        resize: resize filter (``data.transforms.RESIZE_FILTERS``).

    Raises:
        UserError: empty list, a missing or undecodable image, or not enough disk space.
    """
    if not paths:
        raise UserError(f"decoded cache: the {dataset} {split} split has no images")
    h, w = size
    names, stats = fingerprint(paths)
    # Bilinear stores keep the plain name, so they stay valid for the default filter.
    method = "" if resize == "bilinear" else f"-{resize}"
    prefix = f"{dataset}-{split}-{h}x{w}{method}-{names}-"
    folder = Path(folder)
    target = folder / f"{prefix}{stats}.npy"
    shape = (len(paths), h, w, 3)
    if target.is_file() and _valid(target, shape):
        return DecodedStore(target, shape)
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(f"{prefix}*.npy"):
        stale.unlink(missing_ok=True)
    need = int(np.prod(shape)) + 4096
    free = shutil.disk_usage(folder).free
    if free < need:
        raise UserError(f"DATA.CACHE_DIR {folder}: the decoded {dataset} {split} images need "
                        f"{need / 2**30:.2f} GiB, only {free / 2**30:.2f} GiB free")
    if verbose:
        print(f"decoding {len(paths)} {dataset} {split} images at {h}x{w} ({resize}) "
              f"into {target}")
    start = time.time()
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        _decode_into(tmp, paths, size, resize, shape, threads or len(os.sched_getaffinity(0)))
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the store is shared by later runs
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if verbose:
        print(f"decoded cache ready in {time.time() - start:.1f}s")
    return DecodedStore(target, shape)
