"""Synthetic RegDB, SYSU-MM01 and LLCM datasets in the real on-disk layouts.

Every function creates the dataset directly at ``root`` (the dataset root that
a reader is pointed at; ``root`` must be absent or empty) and returns it as a
``Path``. Images come from :mod:`tools.synthetic_people`: each identity has a
fixed genome, each image its own random stream keyed by (seed, pid, camera,
index), so the output is byte-identical for the same arguments.

Command line::

    python tools/make_synthetic_data.py {regdb,sysumm,llcm} OUT_DIR [--ids N] [--images K]
        [--height H --width W] [--seed S] [--mirror-perm rand_perm_cam.mat] [--mirror-ids M]
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.llcm import NIR_CAMS, VIS_CAMS  # noqa: E402
from data.regdb import THERMAL_CAM, VISIBLE_CAM  # noqa: E402
from data.sysu import IR_CAMS, RGB_CAMS  # noqa: E402
from tools.synthetic_people import (  # noqa: E402
    Genome,
    camera_style,
    image_rng,
    make_genome,
    render_person,
)
from utils.cli import Parser  # noqa: E402
from utils.constants import INFRARED, VISIBLE  # noqa: E402
from utils.errors import UserError, cli_entry  # noqa: E402

__all__ = ["make_regdb", "make_sysu", "make_llcm", "render_person", "make_genome", "Genome",
           "dataset_summary"]

_TAG_SPLIT, _TAG_CAMS = 21, 22
# Highest person id of the real SYSU-MM01; mirrored train/val ids are drawn below it.
_SYSU_MAX_PID = 533


def _prepare_root(root: str | Path) -> Path:
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        raise UserError(f"output directory {root} is not empty: expected a new or empty directory")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _save(img: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jpg":
        img.save(path, format="JPEG", quality=90)
    else:
        img.save(path, format="BMP")


def _write_lines(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines))


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    if h < 8 or w < 4:
        raise UserError(f"image size {h}x{w} (height x width): expected at least 8x4")
    return int(h), int(w)


def make_regdb(root: str | Path, num_ids: int = 20, images_per_id: int = 10,
               size: tuple[int, int] = (64, 32), seed: int = 0, num_trials: int = 10,
               num_train: int | None = None) -> Path:
    """RegDB layout: ``Visible/<pid>/*.bmp``, ``Thermal/<pid>/*.bmp``, ``idx/*_<t>.txt``.

    Pids are 1..num_ids. Trial ``t`` splits the ids at random into
    ``num_train`` (default ``num_ids // 2``, as in RegDB) train and the rest
    test; train labels are 0..num_train-1 in ascending pid order, test labels
    are the pids. Lines are ``"Visible/<pid>/<file>.bmp <label>"``. Thermal images
    are single channel.

    Args:
        root: dataset root to create (absent or empty).
        num_ids: identities (real dataset: 412).
        images_per_id: images per modality per identity (real: 10).
        size: (height, width) of every image.
        seed: random seed.
        num_trials: split files per kind (real: 10).
        num_train: training identities per trial (real: 206, half).
    """
    size = _check_size(size)
    if num_ids < 2 or images_per_id < 1:
        raise UserError(f"RegDB needs at least 2 ids and 1 image per id, got {num_ids}, "
                        f"{images_per_id}")
    num_train = num_ids // 2 if num_train is None else num_train
    if not 1 <= num_train < num_ids:
        raise UserError(f"RegDB num_train = {num_train}: expected 1..{num_ids - 1} so that "
                        f"both the train and the test split have identities")
    root = _prepare_root(root)
    files: dict[int, dict[str, list[str]]] = {}
    counter = 0
    for pid in range(1, num_ids + 1):
        g = make_genome(seed, pid)
        files[pid] = {"visible": [], "thermal": []}
        for k in range(images_per_id):
            counter += 1
            for folder, tag, mod, cam in (("Visible", "v", "visible", VISIBLE_CAM),
                                          ("Thermal", "t", "thermal", THERMAL_CAM)):
                rel = f"{folder}/{pid}/{g.gender}_{g.view}_{tag}_{counter:05d}_{pid}.bmp"
                img = render_person(g, mod, image_rng(seed, pid, cam, k), size,
                                    camera_style(seed, cam))
                _save(img, root / rel)
                files[pid][mod].append(rel)
    pids = np.arange(1, num_ids + 1)
    for t in range(1, num_trials + 1):
        perm = np.random.default_rng([seed, _TAG_SPLIT, t]).permutation(pids)
        train = sorted(int(p) for p in perm[:num_train])
        test = sorted(int(p) for p in perm[num_train:])
        for mod in ("visible", "thermal"):
            _write_lines(root / "idx" / f"train_{mod}_{t}.txt",
                         [f"{rel} {label}" for label, pid in enumerate(train)
                          for rel in files[pid][mod]])
            _write_lines(root / "idx" / f"test_{mod}_{t}.txt",
                         [f"{rel} {pid}" for pid in test for rel in files[pid][mod]])
    return root


def _camera_subset(rng: np.random.Generator, rgb: tuple[int, ...], ir: tuple[int, ...],
                   keep: float = 0.7) -> tuple[list[int], list[int]]:
    """Random (RGB, IR) cameras for one id, at least one of each."""
    chosen = [[c for c in cams if rng.random() < keep] for cams in (rgb, ir)]
    for cams, pool in zip(chosen, (rgb, ir)):
        if not cams:
            cams.append(int(rng.choice(pool)))
    return sorted(chosen[0]), sorted(chosen[1])


def _read_ids(mat_path: Path) -> list[int]:
    try:
        return [int(i) for i in np.asarray(scipy.io.loadmat(str(mat_path))["id"]).ravel()]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{mat_path}: expected a .mat file with key 'id' ({exc})") from exc


def _perm_counts(perm_path: Path, pids: list[int]) -> dict[int, dict[int, int]]:
    """Images per camera per pid as given by the official ``rand_perm_cam.mat``."""
    try:
        table = scipy.io.loadmat(str(perm_path))["rand_perm_cam"]
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"{perm_path}: expected the official rand_perm_cam.mat ({exc})") from exc
    counts: dict[int, dict[int, int]] = {}
    for pid in pids:
        counts[pid] = {}
        for cam in range(1, 7):
            cells = table[cam - 1, 0]
            m = cells[pid - 1, 0] if pid <= cells.shape[0] else np.zeros((10, 0))
            if m.size:
                counts[pid][cam] = int(m.shape[1])
    return counts


def make_sysu(root: str | Path, num_train: int = 12, num_val: int = 4, num_test: int = 8,
              images_per_cam: tuple[int, int] = (2, 5), size: tuple[int, int] = (64, 32),
              seed: int = 0, mirror_perm: str | Path | None = None,
              test_id_mat: str | Path | None = None, mirror_ids: int | None = None) -> Path:
    """SYSU-MM01 layout: ``cam<c>/<pid:04d>/<n:04d>.jpg`` and ``exp/*_id.txt``.

    Cams 1, 2, 4, 5 are RGB, 3 and 6 IR (single-channel JPEG). Each id appears
    in a random subset of cameras holding at least one RGB and one IR camera,
    with ``images_per_cam`` (inclusive range) images in each. Ids are spread
    over 1..~1.1*total with gaps, like the real ones.

    With ``mirror_perm`` (the official ``rand_perm_cam.mat``) the test ids are
    the real ones from ``test_id_mat`` (default: ``test_id.mat`` beside the perm
    file), the first ``mirror_ids`` of them (all when None; ``num_test`` is
    ignored), and every (test id, camera) folder holds exactly as many images
    as that camera's permutation matrix has columns, so the official gallery
    sampling runs unchanged. Train and val ids then avoid every real test id.
    The perm file itself is not copied into the dataset.
    """
    size = _check_size(size)
    lo, hi = images_per_cam
    if lo < 1 or hi < lo or num_train < 1 or num_test < 0 or num_val < 0:
        raise UserError(f"SYSU sizes: expected num_train >= 1 and 1 <= lo <= hi, got "
                        f"num_train={num_train}, images_per_cam={images_per_cam}")
    if mirror_perm is None and (test_id_mat is not None or mirror_ids is not None):
        raise UserError("SYSU: test_id_mat and mirror_ids need mirror_perm (rand_perm_cam.mat)")
    split_rng = np.random.default_rng([seed, _TAG_SPLIT])
    counts: dict[int, dict[int, int]] = {}
    if mirror_perm is not None:
        mirror_perm = Path(mirror_perm)
        real_test = _read_ids(Path(test_id_mat) if test_id_mat else
                              mirror_perm.parent / "test_id.mat")
        test = sorted(real_test[:mirror_ids] if mirror_ids is not None else real_test)
        counts = _perm_counts(mirror_perm, test)
        pool = np.setdiff1d(np.arange(1, _SYSU_MAX_PID + 1), real_test)
        if num_train + num_val > pool.size:
            raise UserError(f"SYSU mirror: at most {pool.size} train+val ids, got "
                            f"{num_train + num_val}")
        others = split_rng.choice(pool, num_train + num_val, replace=False)
    else:
        total = num_train + num_val + num_test
        ids = np.sort(split_rng.choice(np.arange(1, int(total * 1.1) + 2), total, replace=False))
        others = split_rng.permutation(ids)
        test = sorted(int(p) for p in others[num_train + num_val:])
        others = others[: num_train + num_val]
    train = sorted(int(p) for p in others[:num_train])
    val = sorted(int(p) for p in others[num_train:])
    root = _prepare_root(root)
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir()
    for pid in sorted(train + val + test):
        if pid not in counts:
            rng = np.random.default_rng([seed, _TAG_CAMS, pid])
            rgb, ir = _camera_subset(rng, RGB_CAMS, IR_CAMS)
            counts[pid] = {c: int(rng.integers(lo, hi + 1)) for c in rgb + ir}
        g = make_genome(seed, pid)
        for cam, n in sorted(counts[pid].items()):
            mod = "nir" if cam in IR_CAMS else "visible"
            for k in range(n):
                img = render_person(g, mod, image_rng(seed, pid, cam, k), size,
                                    camera_style(seed, cam))
                _save(img, root / f"cam{cam}" / f"{pid:04d}" / f"{k + 1:04d}.jpg")
    for name, ids in (("train", train), ("val", val), ("test", test),
                      ("available", sorted(train + val + test))):
        _write_lines(root / "exp" / f"{name}_id.txt", [",".join(str(i) for i in ids)])
    return root


def make_llcm(root: str | Path, num_train: int = 12, num_test: int = 8,
              images_per_cam: tuple[int, int] = (1, 3), size: tuple[int, int] = (64, 32),
              seed: int = 0) -> Path:
    """LLCM layout: ``idx/train_{vis,nir}.txt``, ``idx/test_id.txt``, ``test_{vis,nir}/...``.

    Train images live in ``train_vis/cam<c>/<pid:04d>/`` and
    ``train_nir/cam<c>/<pid:04d>/``, listed in the idx files as
    ``"train_vis/cam<c>/<pid:04d>/<file>.jpg <label>"`` with labels
    0..num_train-1 in ascending pid order. Test images live in
    ``test_vis/cam<c>/<pid:04d>/`` (c = 1..9) and ``test_nir/cam<c>/<pid:04d>/``
    (c = 1, 2, 4..9). Each id appears in a random subset of cameras, at least
    one per modality. NIR images are single-channel JPEGs.
    """
    size = _check_size(size)
    lo, hi = images_per_cam
    if lo < 1 or hi < lo or num_train < 1 or num_test < 1:
        raise UserError(f"LLCM sizes: expected num_train, num_test >= 1 and 1 <= lo <= hi, got "
                        f"{num_train}, {num_test}, {images_per_cam}")
    split_rng = np.random.default_rng([seed, _TAG_SPLIT])
    total = num_train + num_test
    ids = split_rng.permutation(np.arange(1, total + 1))
    train = sorted(int(p) for p in ids[:num_train])
    test = sorted(int(p) for p in ids[num_train:])
    root = _prepare_root(root)
    lists: dict[str, list[str]] = {"vis": [], "nir": []}
    for split in ("train", "test"):
        for kind, cams in (("vis", VIS_CAMS), ("nir", NIR_CAMS)):
            for cam in cams:
                (root / f"{split}_{kind}" / f"cam{cam}").mkdir(parents=True)
    for split, pids in (("train", train), ("test", test)):
        for label, pid in enumerate(pids):
            g = make_genome(seed, pid)
            rng = np.random.default_rng([seed, _TAG_CAMS, pid])
            vis, nir = _camera_subset(rng, VIS_CAMS, NIR_CAMS, 0.5)
            for kind, mod, modality, cams in (("vis", "visible", VISIBLE, vis),
                                              ("nir", "nir", INFRARED, nir)):
                for cam in cams:
                    for k in range(int(rng.integers(lo, hi + 1))):
                        rel = (f"{split}_{kind}/cam{cam}/{pid:04d}/"
                               f"{pid:04d}_c{cam:02d}_{k + 1:04d}_{kind}.jpg")
                        # Both sensors of one LLCM camera share its style, not its stream.
                        img = render_person(g, mod, image_rng(seed, pid, cam, modality, k),
                                            size, camera_style(seed, cam))
                        _save(img, root / rel)
                        if split == "train":
                            lists[kind].append(f"{rel} {label}")
    _write_lines(root / "idx" / "train_vis.txt", sorted(lists["vis"]))
    _write_lines(root / "idx" / "train_nir.txt", sorted(lists["nir"]))
    _write_lines(root / "idx" / "test_id.txt", [",".join(str(i) for i in test)])
    return root


def dataset_summary(root: str | Path) -> str:
    """Ids and images per camera/modality folder (the parent of the pid folders) and splits."""
    root = Path(root)
    images: Counter[str] = Counter()
    ids: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix in (".jpg", ".bmp"):
            group = path.parent.parent.relative_to(root).as_posix()
            images[group] += 1
            ids.setdefault(group, set()).add(path.parent.name)
    lines = [f"{root}: {sum(images.values())} images"]
    lines += [f"  {g:<24} {len(ids[g]):5d} ids {images[g]:6d} images" for g in sorted(images)]
    splits = sorted((root / "idx").glob("*.txt")) + sorted((root / "exp").glob("*.txt"))
    trials = {p.stem.rsplit("_", 1)[1] for p in splits if p.stem.rsplit("_", 1)[1].isdigit()}
    for split in splits:
        if split.stem.rsplit("_", 1)[1] in trials - {"1"}:
            continue
        rows = [line.split(" ") for line in split.read_text().splitlines()]
        if len(rows) == 1 and len(rows[0]) == 1:
            text = f"{len(rows[0][0].split(',')):5d} ids"
        else:
            text = f"{len({r[1] for r in rows}):5d} ids {len(rows):6d} images"
        lines.append(f"  {split.relative_to(root).as_posix():<24} {text}")
    if len(trials) > 1:
        lines.append(f"  ({len(trials)} trials; trial 1 shown)")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``tools/make_synthetic_data.py``."""
    parser = Parser(
        prog="tools/make_synthetic_data.py", description=__doc__.split("\n")[0],
        examples=[
            "python tools/make_synthetic_data.py regdb /tmp/RegDB --ids 40 --images 4",
            "python tools/make_synthetic_data.py sysumm /tmp/SYSU-MM01 --mirror-perm "
            "rand_perm_cam.mat",
            "python tools/make_synthetic_data.py llcm /tmp/LLCM --ids 30",
        ])
    parser.add_argument("dataset", choices=["regdb", "sysumm", "llcm"])
    parser.add_argument("out_dir", type=Path, help="dataset root to create (new or empty)")
    parser.add_argument("--ids", type=int, default=None,
                        help="identities (regdb: all; sysumm: 60/20/20 train/val/test; "
                        "llcm: 2/3 train)")
    parser.add_argument("--train-ids", type=int, default=None,
                        help="regdb: training identities per trial (default: half)")
    parser.add_argument("--images", type=int, default=None,
                        help="regdb: images per modality per id; others: max images per camera")
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mirror-perm", type=Path, default=None,
                        help="sysumm: official rand_perm_cam.mat whose test counts to mirror")
    parser.add_argument("--mirror-ids", type=int, default=None,
                        help="sysumm: mirror only the first M official test ids")
    return parser


@cli_entry
def main() -> None:
    args = build_parser().parse_args()
    size = (args.height, args.width)
    if (args.mirror_perm or args.mirror_ids is not None) and args.dataset != "sysumm":
        raise UserError("--mirror-perm and --mirror-ids apply to sysumm only")
    if args.train_ids is not None and args.dataset != "regdb":
        raise UserError("--train-ids applies to regdb only")
    if args.dataset == "regdb":
        make_regdb(args.out_dir, args.ids or 20, args.images or 10, size, args.seed,
                   num_train=args.train_ids)
    elif args.dataset == "sysumm":
        n = args.ids or 40
        hi = args.images or 5
        make_sysu(args.out_dir, max(1, n * 3 // 5), n // 5, max(1, n - n * 3 // 5 - n // 5),
                  (max(1, hi // 2), hi), size, args.seed, args.mirror_perm,
                  mirror_ids=args.mirror_ids)
    else:
        n = args.ids or 30
        hi = args.images or 3
        make_llcm(args.out_dir, max(1, n * 2 // 3), max(1, n - n * 2 // 3),
                  (max(1, hi // 2), hi), size, args.seed)
    print(dataset_summary(args.out_dir))


if __name__ == "__main__":
    main()
