"""Session-wide synthetic datasets in the real on-disk layouts (see tools/make_synthetic_data.py).

Fixtures return the dataset root as a ``Path``; treat the trees as read-only.
"""
from __future__ import annotations

from pathlib import Path

import pytest

# Every package registers its config sections and registry names when imported.
import data  # noqa: F401
import layers  # noqa: F401
import modeling  # noqa: F401
import solver  # noqa: F401
from tools.make_synthetic_data import make_llcm, make_regdb, make_sysu

# ../shared relative to the repository root: official SYSU-MM01 protocol files.
SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"
SYSU_OFFICIAL_DIR = SHARED_DIR / "data" / "sysu_mm01"


@pytest.fixture(scope="session")
def regdb_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RegDB: pids 1..16, 4 visible + 4 thermal 64x32 images each, 10 trials of 8/8 ids."""
    return make_regdb(tmp_path_factory.mktemp("data") / "RegDB", num_ids=16, images_per_id=4,
                      size=(64, 32), seed=0)


@pytest.fixture(scope="session")
def sysu_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """SYSU-MM01: 8 train, 4 val, 6 test ids (with gaps), 2..4 64x32 images per present camera."""
    return make_sysu(tmp_path_factory.mktemp("data") / "SYSU-MM01", num_train=8, num_val=4,
                     num_test=6, images_per_cam=(2, 4), size=(64, 32), seed=0)


@pytest.fixture(scope="session")
def llcm_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LLCM: 8 train ids (labels 0..7), 6 test ids, 1..3 64x32 images per present camera."""
    return make_llcm(tmp_path_factory.mktemp("data") / "LLCM", num_train=8, num_test=6,
                     images_per_cam=(1, 3), size=(64, 32), seed=0)


@pytest.fixture(scope="session")
def sysu_rand_perm() -> Path:
    """The official SYSU-MM01 ``rand_perm_cam.mat``; skips the test when it is absent."""
    path = SYSU_OFFICIAL_DIR / "rand_perm_cam.mat"
    if not path.is_file() or not (SYSU_OFFICIAL_DIR / "test_id.mat").is_file():
        pytest.skip(f"official SYSU-MM01 protocol files not found in {SYSU_OFFICIAL_DIR}")
    return path


@pytest.fixture(scope="session")
def sysu_mirror_root(tmp_path_factory: pytest.TempPathFactory, sysu_rand_perm: Path) -> Path:
    """SYSU-MM01 whose 4 test ids (the first 4 official ones) hold exactly the official
    per-camera image counts, so ``sysu_rand_perm`` indexes it unchanged; 32x16 images."""
    return make_sysu(tmp_path_factory.mktemp("data") / "SYSU-MM01-mirror", num_train=6,
                     num_val=2, images_per_cam=(2, 3), size=(32, 16), seed=0,
                     mirror_perm=sysu_rand_perm, mirror_ids=4)


@pytest.fixture(scope="module")
def one_thread():
    """Small tensors: one torch thread avoids contention on busy machines."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
