"""Decoded cache: same tensors as decoding, rebuilt when sources change; loader batches."""
from __future__ import annotations

import os
import pickle
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import build_dataset
from data.build import make_test_loader, make_train_loader, sample_seeds
from data.cache import DecodedStore, open_store
from data.transforms import TrainTransform, load_image
from utils.config import load_config
from utils.errors import UserError

AUG = ["DATA.SIZE_TRAIN", "48,24", "DATA.SIZE_TEST", "40,20", "DATA.TRAIN_BATCH_SIZE", "8",
       "DATA.SAMPLE_ID_INSTANCE", "2", "DATA.PADDING", "4", "DATA.RE_PROB", "0.5",
       "DATA.CHANNEL_AUG_PROB", "0.5", "DATA.GRAY_PROB_VISIBLE", "0.3", "DATA.NUM_WORKERS", "0"]


def make_cfg(root: Path, cache_dir: Path, cache: bool, *overrides: str):
    return load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(root),
                              "DATA.CACHE", "yes" if cache else "no",
                              "DATA.CACHE_DIR", str(cache_dir), *AUG, *overrides])


def epoch_batches(cfg, epoch: int = 2, start: int = 0) -> list[dict]:
    ds = build_dataset(cfg, verbose=False)
    loader, sampler = make_train_loader(cfg, ds, verbose=False)
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    return list(loader)


def test_cached_and_decoded_training_batches_are_identical(sysu_root: Path,
                                                           tmp_path: Path) -> None:
    plain = epoch_batches(make_cfg(sysu_root, tmp_path, False))
    cached = epoch_batches(make_cfg(sysu_root, tmp_path, True))
    assert len(plain) == len(cached) > 3
    for a, b in zip(plain, cached):
        assert a.keys() == {"img", "pid", "cam", "modality", "index", "part"}
        assert not a["part"].any()  # no visible copies by default
        assert a["img"].shape == (8, 3, 48, 24) and a["img"].dtype == torch.float32
        for key in a:
            assert torch.equal(a[key], b[key]), key
    assert len(list(tmp_path.glob("sysumm-train-48x24-*.npy"))) == 1
    # Workers and a mid-epoch resume reproduce the same tensors.
    resumed = epoch_batches(make_cfg(sysu_root, tmp_path, True, "DATA.NUM_WORKERS", "2"),
                            start=2)
    assert len(resumed) == len(plain) - 2
    for a, b in zip(plain[2:], resumed):
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["index"], b["index"])
    other_epoch = epoch_batches(make_cfg(sysu_root, tmp_path, True), epoch=3)
    assert not torch.equal(other_epoch[0]["img"], plain[0]["img"])


def test_training_batch_contents(sysu_root: Path, tmp_path: Path) -> None:
    cfg = make_cfg(sysu_root, tmp_path, False)
    ds = build_dataset(cfg, verbose=False)
    batch = epoch_batches(cfg, epoch=2)[1]
    # Batch-wise finishing equals the one-image transform with the sample's seed.
    seeds = sample_seeds(cfg.TRAIN.SEED, 2, 0, 1, len(batch["index"]))
    transform = TrainTransform(cfg)
    for i, index in enumerate(batch["index"].tolist()):
        rec = ds.train[index]
        assert (batch["pid"][i], batch["cam"][i], batch["modality"][i]) == \
            (rec.pid, rec.cam, rec.modality)
        one = transform(load_image(rec.path, (48, 24)), rec.modality,
                        np.random.default_rng(seeds[i]))
        assert torch.equal(batch["img"][i], one)
    for pid in batch["pid"].unique():
        mods = batch["modality"][batch["pid"] == pid]
        assert (mods == 0).sum() == 2 and (mods == 1).sum() == 2


def test_cached_and_decoded_test_batches_are_identical(sysu_root: Path, tmp_path: Path) -> None:
    ds = build_dataset(make_cfg(sysu_root, tmp_path, False), verbose=False, need_train=False)
    query = ds.test_sets["infrared"]
    plain = list(make_test_loader(make_cfg(sysu_root, tmp_path, False), query))
    cached = list(make_test_loader(make_cfg(sysu_root, tmp_path, True), query, split="query"))
    assert torch.equal(torch.cat([b["index"] for b in plain]), torch.arange(len(query)))
    for a, b in zip(plain, cached):
        assert torch.equal(a["img"], b["img"]) and torch.equal(a["pid"], b["pid"])
    assert plain[0]["img"].shape[1:] == (3, 40, 20)


def test_store_rebuilds_when_a_file_changes(regdb_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "RegDB"
    shutil.copytree(regdb_root, root)
    paths = sorted(str(p) for p in (root / "Thermal").rglob("*.bmp"))[:6]
    cache = tmp_path / "cache"
    store = open_store(paths, (32, 16), cache, "regdb", "train", verbose=False)
    first = store.path
    assert np.array_equal(store[3], load_image(paths[3], (32, 16)))
    again = open_store(paths, (32, 16), cache, "regdb", "train", verbose=False)
    assert again.path == first and os.path.getmtime(first) == os.path.getmtime(again.path)
    Image.new("L", (32, 64), color=7).save(paths[3], format="BMP")
    stamp = time.time() + 5  # a distinct mtime even on coarse file systems
    os.utime(paths[3], (stamp, stamp))
    rebuilt = open_store(paths, (32, 16), cache, "regdb", "train", verbose=False)
    assert rebuilt.path != first and not os.path.exists(first)
    assert (rebuilt[3] == 7).all()
    assert sorted(p.name for p in cache.iterdir()) == [os.path.basename(rebuilt.path)]
    # Another split (path list) keeps its own store.
    other = open_store(paths[:3], (32, 16), cache, "regdb", "train", verbose=False)
    assert os.path.exists(rebuilt.path) and other.path != rebuilt.path


def test_store_pickles_without_its_data(regdb_root: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (regdb_root / "Visible").rglob("*.bmp"))[:4]
    store = open_store(paths, (16, 8), tmp_path, "regdb", "x", verbose=False)
    expected = store[1]
    clone = pickle.loads(pickle.dumps(store))
    assert isinstance(clone, DecodedStore) and len(pickle.dumps(store)) < 1000
    assert np.array_equal(clone[1], expected)


def test_store_names_an_undecodable_image(regdb_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.bmp"
    bad.write_bytes(b"garbage")
    paths = [str(next((regdb_root / "Visible").rglob("*.bmp"))), str(bad)]
    with pytest.raises(UserError, match=f"image {bad} does not decode"):
        open_store(paths, (16, 8), tmp_path / "c", "regdb", "train", verbose=False)
    assert not [p for p in (tmp_path / "c").iterdir()]  # no partial store left behind


def test_worker_error_keeps_its_one_line_message(regdb_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "RegDB"
    shutil.copytree(regdb_root, root)
    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", "DATA.ROOT", str(root),
                             "DATA.VERIFY_IMAGES", "no", "DATA.NUM_WORKERS", "1",
                             "DATA.SIZE_TEST", "32,16"])
    ds = build_dataset(cfg, verbose=False)
    vis = ds.test_sets["visible"]
    Path(vis[0].path).write_bytes(b"broken")
    with pytest.raises(UserError) as info:
        list(make_test_loader(cfg, vis))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"image {vis[0].path} does not decode")


def test_store_is_keyed_on_the_resize_filter(regdb_root: Path, tmp_path: Path) -> None:
    paths = sorted(str(p) for p in (regdb_root / "Visible").rglob("*.bmp"))[:4]
    bilinear = open_store(paths, (40, 20), tmp_path, "regdb", "train", verbose=False)
    lanczos = open_store(paths, (40, 20), tmp_path, "regdb", "train", verbose=False,
                         resize="lanczos")
    assert lanczos.path != bilinear.path and os.path.exists(bilinear.path)
    assert os.path.basename(bilinear.path).startswith("regdb-train-40x20-")
    assert "lanczos" not in bilinear.path
    assert os.path.basename(lanczos.path).startswith("regdb-train-40x20-lanczos-")
    for i in range(4):
        assert np.array_equal(bilinear[i], load_image(paths[i], (40, 20)))
        assert np.array_equal(lanczos[i], load_image(paths[i], (40, 20), "lanczos"))
    assert not np.array_equal(bilinear[0], lanczos[0])
    # Each filter finds its own store again and leaves the other in place.
    assert open_store(paths, (40, 20), tmp_path, "regdb", "train", verbose=False).path == \
        bilinear.path
    assert open_store(paths, (40, 20), tmp_path, "regdb", "train", verbose=False,
                      resize="lanczos").path == lanczos.path
    assert len(list(tmp_path.glob("*.npy"))) == 2
