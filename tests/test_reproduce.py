"""tools/reproduce.py: seeds x split trials, two readings, resumable, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import engine.reproduce as reproduce
from tests.helpers import tiny_training

REPO = Path(__file__).resolve().parents[1]
TARGET = ("[TARGET]\nSOURCE = a paper, Tab. 3\nSETTING = visible-to-thermal\nR1 = 91.1\n"
          "MAP = 85.1\n")


def recipe(tmp: Path) -> Path:
    path = tmp / "recipe.ini"
    path.write_text(TARGET)
    return path


@pytest.fixture(scope="module")
def reproduced(regdb_root: Path, tmp_path_factory: pytest.TempPathFactory, one_thread):
    tmp = tmp_path_factory.mktemp("reproduce")
    args = [str(recipe(tmp)), "--seeds", "2", "--trial", "1,2",
            *tiny_training("regdb", regdb_root, tmp / "out", "TRAIN.EVAL_PERIOD", "1")]
    assert reproduce.reproduce_main(args) == 0
    return tmp / "out", args


def test_report_has_every_run_and_both_readings(reproduced):
    out, _ = reproduced
    report = json.loads((out / "report.json").read_text())
    assert [(r["seed"], r["trial"]) for r in report["runs"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for run in report["runs"]:
        folder = out / f"seed_{run['seed']}" / f"trial_{run['trial']}"
        results = json.loads((folder / "results.json").read_text())
        assert run["last"]["R1"] == results["headline"]["R1"]
        assert run["last"]["epoch"] == 2
        # The best test epoch of the periodic evaluations (epoch 1) and the final test.
        records = [json.loads(line) for line in
                   (folder / "metrics.jsonl").read_text().splitlines()]
        evals = {r["epoch"]: r["eval"] for r in records if r.get("eval")}
        assert list(evals) == [1]  # the last epoch is the final test's (SELECT last)
        r1 = {1: evals[1]["visible-to-thermal"]["R1"], 2: results["headline"]["R1"]}
        best = max(r1.values())
        assert run["best_on_test"]["R1"] == best
        assert run["best_on_test"]["epoch"] == min(e for e, v in r1.items() if v == best)
    for name in ("last", "best_on_test"):
        reading = report["readings"][name]
        values = [r[name]["R1"] for r in report["runs"]]
        assert reading["runs"] == 4
        assert reading["mean"]["R1"] == pytest.approx(sum(values) / 4, abs=1e-3)
        assert reading["std"]["R1"] is not None
        assert reading["target"]["figures"]["R1"]["difference"] == pytest.approx(
            reading["mean"]["R1"] - 91.1, abs=1e-3)
    assert report["environment"]["precision"]["training"] == "fp32"
    assert report["dataset_fingerprint"]["splits"]["train"]["ids"] > 0
    text = (out / "report.md").read_text()
    assert "the papers' habit, selected on the test set" in text
    assert "| last epoch: the checkpoint TRAIN.SELECT last keeps" in text
    assert "a paper, Tab. 3, visible-to-thermal." in text and "## Dataset" in text


def test_rerun_trains_nothing_and_rewrites_the_report(reproduced, monkeypatch):
    out, args = reproduced
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("seed_*/trial_*/results.json")}
    assert len(stamps) == 4

    def no_training(*a, **k):
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr(reproduce, "train_and_test", no_training)
    before = (out / "report.json").read_text()
    # A new published figure only relabels the report: the runs are kept.
    assert reproduce.reproduce_main([*args, "TARGET.R1", "80"]) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    after = json.loads((out / "report.json").read_text())
    assert after["runs"] == json.loads(before)["runs"]
    assert after["readings"]["last"]["target"]["figures"]["R1"]["target"] == 80.0


def test_a_changed_recipe_does_not_mix_with_finished_runs(reproduced):
    _, args = reproduced
    with pytest.raises(reproduce.UserError, match=r"made with another config \(TRAIN\.MAX_EPOCHS"):
        reproduce.reproduce_main([*args, "TRAIN.MAX_EPOCHS", "3"])


def run_tool(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/reproduce.py", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["recipe", "seeds0", "seedsx", "output", "report"])
def test_bad_input_is_one_line_and_exit_2(case, tmp_path):
    ini = recipe(tmp_path)
    out = tmp_path / "out"
    argv = {"recipe": [str(tmp_path / "missing.ini"), "--seeds", "2"],
            "seeds0": [str(ini), "--seeds", "0"],
            "seedsx": [str(ini), "--seeds", "two"],
            "output": [str(ini), "--seeds", "1", "TRAIN.OUTPUT_PATH", str(ini / "out")],
            "report": [str(ini), "--seeds", "1", "TRAIN.OUTPUT_PATH", str(out)]}[case]
    if case == "report":  # an earlier report, and a name the new one cannot take
        out.mkdir()
        (out / "report.md").write_text("earlier report\n")
        (out / "report.json").mkdir()
    proc = run_tool(*argv)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in proc.stderr
    expected = {"recipe": "missing.ini: recipe file not found",
                "seeds0": "--seeds 0: expected a positive integer",
                "seedsx": "--seeds two: expected a positive integer",
                "output": "cannot write the report there",
                "report": "report.json: cannot write the report (not a file)"}[case]
    assert expected in lines[0]
    if case == "report":
        assert (out / "report.md").read_text() == "earlier report\n"
        assert not list(out.glob("seed_*"))
