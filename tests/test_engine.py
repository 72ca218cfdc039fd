"""The training loop: it learns, writes its files, stops on a non-finite loss, selects honestly."""
from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

import data
from engine.distributed import DistInfo, resolve_device
from engine.evaluate import evaluate
from engine.launch import train_and_test, train_main
from engine.logger import EpochProgress, MetricsWriter
from engine.runtime import seed_everything
from engine.selection import periodic_evaluation
from layers.criterion import Criterion
from modeling import build_model
from tools.make_synthetic_data import make_regdb
from utils.config import config_to_ini, load_config
from utils.errors import UserError, cli_entry

main_regdb = partial(train_main, "train_regdb.py", "regdb")

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def closed_regdb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """RegDB layout whose trial 1 is closed-set: 12 ids, 4 + 4 images per modality for
    training and 4 + 4 other images of the same ids for testing.

    From scratch, cross-modality retrieval of *unseen* identities needs far more
    training than a unit test can afford; unseen images of trained identities
    show within seconds whether the loop learns.
    """
    root = make_regdb(tmp_path_factory.mktemp("closed") / "RegDB", num_ids=12,
                      images_per_id=8, size=(64, 32), seed=0, num_trials=1)
    for mod, folder in (("visible", "Visible"), ("thermal", "Thermal")):
        train, test = [], []
        for label, pid in enumerate(range(1, 13)):
            files = sorted(p.relative_to(root).as_posix() for p in (root / folder / str(pid))
                           .iterdir())
            train += [f"{f} {label}" for f in files[:4]]
            test += [f"{f} {pid}" for f in files[4:]]
        (root / "idx" / f"train_{mod}_1.txt").write_text("\n".join(train) + "\n")
        (root / "idx" / f"test_{mod}_1.txt").write_text("\n".join(test) + "\n")
    return root


def base_opts(root: Path, out: Path) -> list[str]:
    return ["DATA.ROOT", str(root), "DATA.SIZE_TRAIN", "32,16", "DATA.SIZE_TEST", "32,16",
            "DATA.PADDING", "2", "DATA.NUM_WORKERS", "0", "MODEL.NAME", "resnet18",
            "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu", "MODEL.SHARED_FROM", "1",
            "MODEL.LAST_STRIDE", "2", "LOSS.TERMS", "id,triplet", "TRAIN.OPTIMIZER", "adam",
            "TRAIN.BASE_LR", "0.001", "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "",
            "TRAIN.OUTPUT_PATH", str(out)]


def test_tiny_two_stream_resnet18_learns_and_writes_its_files(closed_regdb: Path,
                                                              tmp_path: Path) -> None:
    cfg = load_config(None, base_opts(closed_regdb, tmp_path) + [
        "DATA.TRAIN_BATCH_SIZE", "32", "TRAIN.MAX_EPOCHS", "10", "TRAIN.ITERS_PER_EPOCH", "6",
        "TRAIN.EVAL_PERIOD", "5", "TRAIN.CHECKPOINT_PERIOD", "5", "TRAIN.LOG_PERIOD", "3",
        "TRAIN.SELECT", "test"])
    dataset = data.build_dataset(cfg, verbose=False)
    seed_everything(cfg.TRAIN.SEED)  # the trainer's initial weights
    untrained = evaluate(cfg, build_model(cfg, dataset.num_classes).eval(), dataset)
    untrained_r1 = untrained["headline"]["R1"]

    results = train_and_test(cfg, None, DistInfo(), CPU)

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, 11))
    for r in rows:
        assert {"iteration", "loss", "loss_id", "loss_tri", "lr", "time_s",
                "images_per_s"} <= r.keys()
        assert r["loss"] == pytest.approx(r["loss_id"] + r["loss_tri"])
    assert rows[-1]["iteration"] == 60
    assert [r["epoch"] for r in rows if "eval" in r] == [5, 10]
    last_eval = rows[-1]["eval"]  # the final epoch's weights, whatever was selected
    assert last_eval["purpose"] == "selected on the test set"
    trained_r1 = last_eval["visible-to-thermal"]["R1"]
    assert trained_r1 >= untrained_r1 + 20 and trained_r1 >= 25, (untrained_r1, trained_r1)
    assert rows[-1]["loss"] < rows[0]["loss"]

    # results.json: the selected (best on test) checkpoint, labelled as such.
    best_epoch = max((r for r in rows if "eval" in r), key=lambda r: r["eval"]["score"])["epoch"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"] == results["settings"]
    assert saved["selection"]["select"] == "test"
    assert saved["selection"]["note"] == "selected on the test set"
    assert saved["selection"]["epoch"] == best_epoch
    assert set(saved["settings"]) == {"visible-to-thermal", "thermal-to-visible"}

    log = (tmp_path / "log.txt").read_text()
    assert "selected on the test set" in log and "epoch 10/10 iter 6/6" in log
    assert load_config(tmp_path / "config.ini") == cfg
    for name in ("last.pth", "best.pth"):
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        assert {"model", "optimizer", "scheduler", "scaler", "criterion", "epoch", "iteration",
                "best_metric", "best_epoch", "rng", "config", "num_classes",
                "select"} <= ckpt.keys()
        assert ckpt["config"] == config_to_ini(cfg) and ckpt["num_classes"] == 12
        assert {"python", "numpy", "torch", "cuda", "sampler"} <= ckpt["rng"][0].keys()
    assert torch.load(tmp_path / "best.pth", weights_only=True)["epoch"] == best_epoch
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))


def test_non_finite_loss_stops_with_one_line_and_keeps_the_last_checkpoint(
        regdb_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    cfg = load_config(None, base_opts(regdb_root, tmp_path) + [
        "DATA.TRAIN_BATCH_SIZE", "16", "TRAIN.MAX_EPOCHS", "3", "TRAIN.ITERS_PER_EPOCH", "2",
        "TRAIN.CHECKPOINT_PERIOD", "1", "TRAIN.EVAL_PERIOD", "0"])
    ini = tmp_path / "run.ini"
    ini.write_text(config_to_ini(cfg))
    real, calls = Criterion.forward, {"n": 0}

    def nan_on_fourth_call(self, *args):
        loss, terms = real(self, *args)
        calls["n"] += 1
        if calls["n"] == 4:  # epoch 2, iteration 2
            terms["loss_tri"] = terms["loss_tri"] * float("nan")
            loss = loss * float("nan")
        return loss, terms

    monkeypatch.setattr(Criterion, "forward", nan_on_fourth_call)
    monkeypatch.setattr("sys.argv", ["train_regdb.py", "--config", str(ini)])
    with pytest.raises(SystemExit) as exit_info:
        cli_entry(main_regdb)()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "error: non-finite loss at epoch 2, iteration 2/2: loss_tri = nan")
    run = tmp_path / "trial_1"
    assert "last good checkpoint" in err[0]
    assert torch.load(run / "last.pth", weights_only=True)["epoch"] == 1
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    assert "non-finite loss at epoch 2" in (run / "log.txt").read_text()


def test_select_val_needs_a_val_split(regdb_root: Path, sysu_root: Path) -> None:
    cfg = load_config(None, ["DATA.ROOT", str(regdb_root), "TRAIN.SELECT", "val"])
    with pytest.raises(UserError, match="RegDB trial 1 has no validation split: set DATA.VAL_IDS"):
        periodic_evaluation(cfg, data.build_dataset(cfg, verbose=False), CPU)
    cfg = load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(sysu_root),
                             "TRAIN.SELECT", "val"])
    with pytest.raises(UserError, match="SYSUMM.VAL_AS_TRAIN = no"):
        periodic_evaluation(cfg, data.build_dataset(cfg, verbose=False), CPU)
    held_out = load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(sysu_root),
                                  "DATA.SYSU_VAL_AS_TRAIN", "no", "TRAIN.SELECT", "last"])
    monitor = periodic_evaluation(held_out, data.build_dataset(held_out, verbose=False), CPU)
    assert (monitor.split, monitor.purpose) == ("val", "monitor")


def test_device_choice() -> None:
    def device(name: str) -> torch.device:
        return resolve_device(load_config(None, ["MODEL.DEVICE", name]))

    assert device("cpu") == CPU
    assert device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="not auto, cpu, cuda or cuda:N"):
        device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            device("cuda:0")


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture) -> None:
    terms = {"loss_id": 1.5, "loss_tri": 0.25}
    monkeypatch.setattr("sys.stdout.isatty", lambda: False)
    with caplog.at_level("INFO", logger="engine"):
        progress = EpochProgress(2, 5, total=4, log_period=2, enabled=True, remaining_after=12)
        for it in range(1, 5):
            progress.update(it, 8, terms, 1e-3)
        progress.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2 and lines[0].startswith(
        "epoch 2/5 iter 2/4 loss 1.7500 (id 1.5000 tri 0.2500) lr 1.000e-03")
    assert "img/s eta" in lines[0] and progress.images == 32

    monkeypatch.setattr("sys.stdout.isatty", lambda: True)
    caplog.clear()
    progress = EpochProgress(1, 5, total=3, log_period=1, enabled=True)
    assert progress.bar is not None
    for it in range(1, 4):
        progress.update(it, 8, terms, 1e-3)
    assert progress.bar.n == 3 and "tri=0.250" in str(progress.bar)
    progress.close()
    assert not caplog.records  # the bar replaces the lines


def test_metrics_truncation_drops_replayed_epochs_and_cut_lines(tmp_path: Path) -> None:
    writer = MetricsWriter(tmp_path)
    for epoch in (1, 2, 3):
        writer.write_epoch({"epoch": epoch, "loss": 1.0 / epoch})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 4, "lo')  # a line cut by a kill
    MetricsWriter(tmp_path).truncate_after(2)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]


def test_a_rerank_beyond_its_limit_is_refused_before_training(regdb_root, tmp_path,
                                                               monkeypatch):
    from tests.helpers import tiny_training

    monkeypatch.setattr("utils.rerank.MAX_RERANK_IMAGES", 10)
    cfg = load_config(None, tiny_training("regdb", regdb_root, tmp_path / "run",
                                          "TEST.RERANK", "yes"))
    with pytest.raises(UserError, match=r"TEST.RERANK: \d+ queries \+ \d+ gallery images = "
                                        r"\d+ exceeds the re-ranking limit of 10 images"):
        train_and_test(cfg, None, DistInfo(), torch.device("cpu"))
    assert not (tmp_path / "run" / "last.pth").exists()  # refused before the first epoch
