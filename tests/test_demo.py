"""The demo pipeline at a reduced size: it learns, prints both figures and draws."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import demo  # noqa: E402


def test_demo_pipeline_learns_and_draws(tmp_path, capsys):
    res = demo.run_demo(tmp_path, num_ids=128, num_train=96, images=6, image_size=(64, 32),
                        overrides=["TRAIN.MAX_EPOCHS", "16", "TRAIN.ITERS_PER_EPOCH", "12",
                                   "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.EVAL_PERIOD", "0",
                                   "TRAIN.CHECKPOINT_PERIOD", "8", "DATA.NUM_WORKERS", "0"])
    before = res["untrained"]["visible-to-thermal"]["R1"]
    after = res["trained"]["visible-to-thermal"]["R1"]
    assert res["num_test_ids"] == 32
    settings = json.loads((tmp_path / "RegDB" / "demo_dataset.json").read_text())
    assert settings["num_ids"] == 128 and settings["num_train"] == 96
    # The learning bar at this size: far above chance and well above the untrained model.
    assert after >= 8 * res["chance"], (before, after)
    assert after >= before + 15, (before, after)
    table = demo.report(res)
    assert "untrained" in table and "trained" in table and "chance R1" in table
    for name, size in (("cmc.png", (600, 450)), ("training_curves.png", None),
                       ("ranked_visible-to-thermal.png", None),
                       ("ranked_thermal-to-visible.png", None),
                       ("embedding.png", (600, 600)), ("distances.png", (650, 450))):
        img = Image.open(res["pictures"] / name)
        assert img.format == "PNG"
        if size:
            assert img.size == size
    sheet = Image.open(res["pictures"] / "ranked_visible-to-thermal.png")
    assert sheet.size == (6 + 11 * (64 + 6) + 6, 6 + 8 * (128 + 14 + 6))
    for f in ("config.ini", "log.txt", "metrics.jsonl", "last.pth", "results.json"):
        assert (res["run_dir"] / f).is_file(), f
    found = res["search"]  # tools/search.py on three visible test queries
    assert found["queries"] == 3 and found["gallery"] == 32 * 6
    assert 0 <= found["top1_same"] <= 3 and f"for {found['top1_same']} of 3" in table
    ranking = json.loads((found["out"] / "ranking.json").read_text())
    assert [found["out"] / q["sheet"] for q in ranking["queries"]] == found["sheets"]
    assert all(Image.open(p).format == "PNG" for p in found["sheets"])


def test_demo_dataset_reused_or_redrawn(tmp_path):
    root = demo.prepare_dataset(tmp_path / "RegDB", 6, 1, (32, 16), num_train=4)
    marker = root / "idx" / "train_visible_1.txt"
    stamp = marker.stat().st_mtime_ns
    assert demo.prepare_dataset(root, 6, 1, (32, 16), num_train=4) == root
    assert marker.stat().st_mtime_ns == stamp  # same settings: reused as it is
    demo.prepare_dataset(root, 8, 1, (32, 16), num_train=5)
    assert len(list((root / "Visible").iterdir())) == 8
    assert len(marker.read_text().splitlines()) == 5
    (root / demo.STAMP).write_text("{cut")  # unreadable stamp: still the demo's, redrawn
    (tmp_path / "RegDB.partial" / "junk").mkdir(parents=True)  # an interrupted drawing
    demo.prepare_dataset(root, 6, 1, (32, 16), num_train=4)
    assert len(list((root / "Visible").iterdir())) == 6
    assert not (tmp_path / "RegDB.partial").exists()


def test_demo_never_replaces_a_folder_it_did_not_draw(tmp_path):
    real = tmp_path / "RegDB"
    (real / "Visible").mkdir(parents=True)
    (real / "Visible" / "keep.bmp").write_bytes(b"user data")
    with pytest.raises(UserError, match=r"RegDB exists but has no demo_dataset.json"):
        demo.prepare_dataset(real, 6, 1, (32, 16), num_train=4)
    assert (real / "Visible" / "keep.bmp").read_bytes() == b"user data"


def test_demo_bad_sizes_one_line(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "tools" / "demo.py"), "--out",
                           str(tmp_path), "--test-ids", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: demo sizes: expected --train-ids, --test-ids and "
                                   "--images >= 1, got 400, 0, 10")
    assert not any(tmp_path.iterdir())
