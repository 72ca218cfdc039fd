"""Pictures are valid PNGs of the expected size and content."""
import json

import numpy as np
import pytest
from PIL import Image

from utils.errors import UserError
from utils.visualize import cmc_curves, curve_series, ranked_sheet, training_curves


def _images(tmp_path, n, colour):
    paths = []
    for i in range(n):
        p = tmp_path / f"{colour}_{i}.png"
        Image.new("RGB", (32, 64), (10 * i, 100, 200)).save(p)
        paths.append(str(p))
    return paths


def test_ranked_sheet_frames_and_size(tmp_path):
    q = _images(tmp_path, 3, "q")
    g = _images(tmp_path, 12, "g")
    q_pids, g_pids = [0, 1, 2], [i % 4 for i in range(12)]
    rng = np.random.default_rng(0)
    dist = rng.random((3, 12))
    dist[0, 4] = -1.0  # gallery 4 (id 0) nearest to query 0: a green frame first
    dist[1, 3] = -1.0  # gallery 3 (id 3) nearest to query 1: a red frame first
    out = tmp_path / "ranked.png"
    size = ranked_sheet(q, q_pids, g, g_pids, dist, out, topk=10, cell=(64, 32))
    img = Image.open(out)
    img.verify()
    img = Image.open(out).convert("RGB")
    assert img.size == size == (6 + 11 * (32 + 6) + 6, 6 + 3 * (64 + 14 + 6))
    first_col_x = 6 + (32 + 6)  # left edge of the first gallery cell
    assert img.getpixel((first_col_x + 1, 6 + 1)) == (40, 170, 60)
    assert img.getpixel((first_col_x + 1, 6 + 84 + 1)) == (210, 40, 40)


def test_cmc_curves_png(tmp_path):
    out = tmp_path / "cmc.png"
    cmc_curves({"visible->thermal": np.linspace(0.5, 1, 20),
                "thermal->visible": np.linspace(0.4, 1, 20)}, out)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (600, 450)


def test_training_curves_from_metrics_jsonl(tmp_path):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for epoch in range(1, 5):
            row = {"epoch": epoch, "lr": 0.01 / epoch, "loss": 3.0 / epoch,
                   "loss_id": 2.0 / epoch, "loss_tri": 1.0 / epoch}
            if epoch % 2 == 0:
                row["eval"] = {"R1": 10.0 * epoch, "mAP": 8.0 * epoch}
            f.write(json.dumps(row) + "\n")
    out = training_curves(tmp_path)
    img = Image.open(out)
    assert img.format == "PNG" and img.size == (1500, 400)


def test_training_curves_missing_run(tmp_path):
    with pytest.raises(UserError, match="metrics.jsonl: not found"):
        training_curves(tmp_path)


def _run_with_results(tmp_path, eval_split, selected_epoch):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for epoch in range(1, 5):
            row = {"epoch": epoch, "lr": 0.1, "loss": 1.0 / epoch}
            if epoch == 2:
                row["eval"] = {"split": eval_split, "score": 20.0,
                               "v2t": {"R1": 20.0, "mAP": 15.0}}
            f.write(json.dumps(row) + "\n")
    results = {"split": "test", "selection": {"select": "last", "epoch": selected_epoch},
               "settings": {"v2t": {"mean": {"R1": 40.0, "mAP": 30.0}}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    return curve_series(tmp_path)["evaluation (%)"]


def test_training_curves_end_with_the_final_test(tmp_path):
    series = _run_with_results(tmp_path, "test", 4)
    assert series["eval/v2t/R1"] == ([2, 4], [20.0, 40.0])
    assert series["eval/v2t/mAP"] == ([2, 4], [15.0, 30.0])
    assert training_curves(tmp_path).is_file()


def test_training_curves_final_test_on_another_split(tmp_path):
    series = _run_with_results(tmp_path, "val", 2)
    assert series["eval/v2t/R1"] == ([2], [20.0])
    assert series["final test/v2t/R1"] == ([2], [40.0])


def test_training_curves_skip_a_repeated_or_unreadable_final_test(tmp_path):
    series = _run_with_results(tmp_path, "test", 2)  # evaluated at that epoch already
    assert series["eval/v2t/R1"] == ([2], [20.0])
    (tmp_path / "results.json").write_text("{cut")
    assert curve_series(tmp_path)["evaluation (%)"]["eval/v2t/R1"] == ([2], [20.0])
