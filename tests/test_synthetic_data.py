"""Synthetic datasets: exact real layouts, valid splits, image modes, determinism, learnability."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from tools.make_synthetic_data import make_llcm, make_regdb, make_sysu
from tools.synthetic_people import make_genome, render_person
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def _read_split(path: Path) -> list[tuple[str, int]]:
    rows = [line.split(" ") for line in path.read_text().splitlines()]
    assert rows and all(len(r) == 2 for r in rows), path
    return [(rel, int(label)) for rel, label in rows]


def _read_ids(path: Path) -> list[int]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, path
    return [int(i) for i in lines[0].split(",")]


def _tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_regdb_layout_and_splits(regdb_root: Path) -> None:
    for folder, tag, mode in (("Visible", "v", "RGB"), ("Thermal", "t", "L")):
        assert sorted(int(p.name) for p in (regdb_root / folder).iterdir()) == list(range(1, 17))
        for pid_dir in (regdb_root / folder).iterdir():
            names = sorted(p.name for p in pid_dir.iterdir())
            assert len(names) == 4
            pattern = rf"(female|male)_(front|back)_{tag}_\d{{5}}_{pid_dir.name}\.bmp"
            assert all(re.fullmatch(pattern, n) for n in names), names
        with Image.open(next((regdb_root / folder / "1").iterdir())) as im:
            assert (im.mode, im.size) == (mode, (32, 64))
    expected = {f"{s}_{m}_{t}.txt" for s in ("train", "test") for m in ("visible", "thermal")
                for t in range(1, 11)}
    assert {p.name for p in (regdb_root / "idx").iterdir()} == expected
    train_sets = set()
    for t in range(1, 11):
        ids = {}
        for split in ("train", "test"):
            for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
                rows = _read_split(regdb_root / "idx" / f"{split}_{mod}_{t}.txt")
                assert all((regdb_root / rel).is_file() and rel.startswith(folder + "/")
                           for rel, _ in rows)
                pids = [int(rel.split("/")[1]) for rel, _ in rows]
                assert pids == sorted(pids)
                if split == "train":
                    order = sorted(set(pids))
                    assert [label for _, label in rows] == [order.index(p) for p in pids]
                else:
                    assert [label for _, label in rows] == pids
                ids[split, mod] = set(pids)
        assert ids["train", "visible"] == ids["train", "thermal"]
        assert ids["test", "visible"] == ids["test", "thermal"]
        assert len(ids["train", "visible"]) == 8
        assert not ids["train", "visible"] & ids["test", "visible"]
        assert ids["train", "visible"] | ids["test", "visible"] == set(range(1, 17))
        train_sets.add(frozenset(ids["train", "visible"]))
    assert len(train_sets) > 1


def test_sysu_layout(sysu_root: Path) -> None:
    assert sorted(p.name for p in sysu_root.iterdir()) == [f"cam{c}" for c in range(1, 7)] + ["exp"]
    train, val, test, available = (_read_ids(sysu_root / "exp" / f"{n}_id.txt")
                                   for n in ("train", "val", "test", "available"))
    assert (len(train), len(val), len(test)) == (8, 4, 6)
    assert sorted(train + val + test) == available and len(set(available)) == 18
    assert available[-1] > len(available)  # ids have gaps, like the real ones
    cams_of: dict[int, set[int]] = {}
    for cam in range(1, 7):
        for pid_dir in (sysu_root / f"cam{cam}").iterdir():
            assert re.fullmatch(r"\d{4}", pid_dir.name)
            names = sorted(p.name for p in pid_dir.iterdir())
            assert names == [f"{i:04d}.jpg" for i in range(1, len(names) + 1)]
            assert 2 <= len(names) <= 4
            cams_of.setdefault(int(pid_dir.name), set()).add(cam)
            with Image.open(pid_dir / names[0]) as im:
                assert im.mode == ("L" if cam in (3, 6) else "RGB")
    assert sorted(cams_of) == available
    assert all(c & {1, 2, 4, 5} and c & {3, 6} for c in cams_of.values())
    assert any(len(c) < 6 for c in cams_of.values())


def test_llcm_layout(llcm_root: Path) -> None:
    assert {p.name for p in (llcm_root / "idx").iterdir()} == {
        "train_vis.txt", "train_nir.txt", "test_id.txt"}
    labels = {}
    for kind, mode in (("vis", "RGB"), ("nir", "L")):
        rows = _read_split(llcm_root / "idx" / f"train_{kind}.txt")
        pid_of = {}
        for rel, label in rows:
            m = re.fullmatch(rf"train_{kind}/cam(\d)/(\d{{4}})/[^/]+\.jpg", rel)
            assert m and (llcm_root / rel).is_file(), rel
            assert kind == "vis" or m.group(1) != "3"
            assert pid_of.setdefault(label, m.group(2)) == m.group(2)
        labels[kind] = pid_of
        with Image.open(llcm_root / rows[0][0]) as im:
            assert im.mode == mode
    assert labels["vis"] == labels["nir"] and sorted(labels["vis"]) == list(range(8))
    pids = [int(p) for _, p in sorted(labels["vis"].items())]
    assert pids == sorted(pids)
    test = _read_ids(llcm_root / "idx" / "test_id.txt")
    assert len(test) == 6 and not set(test) & set(pids)
    assert sorted(p.name for p in (llcm_root / "test_vis").iterdir()) == [
        f"cam{c}" for c in range(1, 10)]
    assert sorted(p.name for p in (llcm_root / "test_nir").iterdir()) == [
        f"cam{c}" for c in (1, 2, 4, 5, 6, 7, 8, 9)]
    for kind, mode in (("vis", "RGB"), ("nir", "L")):
        files = sorted((llcm_root / f"test_{kind}").glob("cam*/*/*.jpg"))
        assert {int(f.parent.name) for f in files} == set(test)
        with Image.open(files[0]) as im:
            assert im.mode == mode


def test_deterministic_per_seed(tmp_path: Path) -> None:
    makers = {
        "regdb": lambda root, seed: make_regdb(root, 4, 2, (32, 16), seed, num_trials=2),
        "sysu": lambda root, seed: make_sysu(root, 3, 1, 2, (1, 2), (32, 16), seed),
        "llcm": lambda root, seed: make_llcm(root, 3, 2, (1, 2), (32, 16), seed),
    }
    for name, make in makers.items():
        first = _tree_bytes(make(tmp_path / name / "a", 3))
        assert first == _tree_bytes(make(tmp_path / name / "b", 3))
        other = _tree_bytes(make(tmp_path / name / "c", 4))
        assert first != other
        images = [{v for k, v in tree.items() if k.endswith((".jpg", ".bmp"))}
                  for tree in (first, other)]
        assert images[0] and not images[0] & images[1]  # no image drawn the same


def test_regdb_unequal_split(tmp_path: Path) -> None:
    root = make_regdb(tmp_path / "RegDB", 10, 1, (32, 16), num_trials=2, num_train=7)
    for t in (1, 2):
        train, test = ({int(r.split("/")[1]) for r, _ in _read_split(root / "idx" / name)}
                       for name in (f"train_visible_{t}.txt", f"test_thermal_{t}.txt"))
        assert len(train) == 7 and len(test) == 3 and train | test == set(range(1, 11))
    for bad in (0, 10):
        with pytest.raises(UserError, match=f"num_train = {bad}: expected 1..9"):
            make_regdb(tmp_path / f"bad{bad}", 10, 1, (32, 16), num_train=bad)


def test_non_empty_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(UserError, match="not empty"):
        make_regdb(tmp_path, 2, 1)


def test_sysu_mirrors_official_counts(sysu_mirror_root: Path, sysu_rand_perm: Path) -> None:
    official_test = [int(i) for i in scipy.io.loadmat(
        str(sysu_rand_perm.parent / "test_id.mat"))["id"].ravel()]
    perm = scipy.io.loadmat(str(sysu_rand_perm))["rand_perm_cam"]
    test = _read_ids(sysu_mirror_root / "exp" / "test_id.txt")
    assert test == sorted(official_test[:4])
    others = _read_ids(sysu_mirror_root / "exp" / "train_id.txt") + _read_ids(
        sysu_mirror_root / "exp" / "val_id.txt")
    assert len(others) == 8 and not set(others) & set(official_test)
    for pid in test:
        for cam in range(1, 7):
            n = perm[cam - 1, 0][pid - 1, 0].shape[1] if perm[cam - 1, 0][pid - 1, 0].size else 0
            folder = sysu_mirror_root / f"cam{cam}" / f"{pid:04d}"
            names = sorted(p.name for p in folder.glob("*.jpg")) if folder.is_dir() else []
            assert names == [f"{i:04d}.jpg" for i in range(1, n + 1)], (pid, cam)


def _gray(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("L"), np.float32) / 255.0


def _rank1_and_auc(query: np.ndarray, gallery: np.ndarray, labels: np.ndarray
                   ) -> tuple[float, float]:
    """Cosine nearest neighbour rank-1 and mean per-query AUC (chance: 1/ids and 0.5)."""
    def norm(f: np.ndarray) -> np.ndarray:
        f = f.reshape(len(f), -1)
        f = f - f.mean(1, keepdims=True)
        return f / (np.linalg.norm(f, axis=1, keepdims=True) + 1e-8)

    sim = norm(query) @ norm(gallery).T
    same = labels[:, None] == labels[None, :]
    rank1 = float((labels[sim.argmax(1)] == labels).mean())
    auc = float(np.mean([(s[m][:, None] > s[~m][None, :]).mean() for s, m in zip(sim, same)]))
    return rank1, auc


def test_identity_learnable_across_modalities(regdb_root: Path) -> None:
    vis = sorted((regdb_root / "Visible").glob("*/*.bmp"))
    thr = sorted((regdb_root / "Thermal").glob("*/*.bmp"))
    labels = np.array([int(p.parent.name) for p in vis])
    assert labels.tolist() == [int(p.parent.name) for p in thr]
    v, t = np.stack([_gray(p) for p in vis]), np.stack([_gray(p) for p in thr])
    chance = 1.0 / len(set(labels.tolist()))
    # Vertical edge profile: invariant to horizontal shift and flip, blind to colour.
    profile = lambda x: np.abs(np.diff(x, axis=1)).sum(2)  # noqa: E731
    rank1, auc = _rank1_and_auc(profile(v), profile(t), labels)
    assert rank1 >= 3 * chance and auc > 0.6
    # Raw pixels are far from solving it (a fabric's lightness only loosely follows its
    # infrared intensity), although colour identifies people within visible.
    raw_rank1, _ = _rank1_and_auc(v[:, ::4, ::4], t[:, ::4, ::4], labels)
    assert raw_rank1 < 0.5
    rgb = np.stack([np.asarray(Image.open(p), np.float32) for p in vis])[:, ::4, ::4]
    first, second = rgb[0::4], rgb[1::4]
    within, _ = _rank1_and_auc(first, second, labels[0::4])
    assert within >= 4 * chance


def test_render_person_modes_and_bad_modality() -> None:
    g = make_genome(0, 7)
    sizes = {m: render_person(g, m, np.random.default_rng(0), (48, 24))
             for m in ("visible", "thermal", "nir")}
    assert [(im.mode, im.size) for im in sizes.values()] == [
        ("RGB", (24, 48)), ("L", (24, 48)), ("L", (24, 48))]
    with pytest.raises(ValueError, match="modality"):
        render_person(g, "depth", np.random.default_rng(0))


def test_cli(tmp_path: Path) -> None:
    cmd = [sys.executable, str(REPO / "tools" / "make_synthetic_data.py"), "regdb",
           str(tmp_path / "RegDB"), "--ids", "4", "--images", "2", "--height", "32",
           "--width", "16"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"Visible\s+4 ids\s+8 images", done.stdout)
    assert len(list((tmp_path / "RegDB" / "Thermal").glob("*/*.bmp"))) == 8
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert again.returncode == 2 and again.stderr.startswith("error: ")


def test_cli_train_ids(tmp_path: Path) -> None:
    base = [sys.executable, str(REPO / "tools" / "make_synthetic_data.py")]
    done = subprocess.run([*base, "regdb", str(tmp_path / "RegDB"), "--ids", "5", "--images", "1",
                           "--height", "32", "--width", "16", "--train-ids", "4"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert len(_read_split(tmp_path / "RegDB" / "idx" / "train_visible_1.txt")) == 4
    bad = subprocess.run([*base, "sysumm", str(tmp_path / "SYSU"), "--train-ids", "4"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip() == "error: --train-ids applies to regdb only"
