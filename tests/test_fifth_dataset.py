"""A dataset defined here, in a layout and protocol of its own, runs through train.py and
test.py unchanged: the engine asks the dataset, never its name."""
from __future__ import annotations

import ast
import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from yacs.config import CfgNode

from data import DATASETS, ImageRecord, VIReIDDataset, register_dataset
from data.base import by_modality, list_images, read_id_file, relabel, sort_records
from data.protocols import Setting, seeded_gallery
from engine.launch import train_main
from tests.helpers import load_test_script, run_script, tiny_training
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.metrics import RankingRule

REPO = Path(__file__).resolve().parents[1]
NAME, FOLDS = "duskcam", "duskfolds"
TRAIN_IDS, TEST_IDS, IMAGES = range(1, 9), range(9, 13), 3

pytestmark = pytest.mark.usefixtures("one_thread")


SCRIPT = load_test_script("vireid_test_script_fifth")


def define_duskcam() -> type[VIReIDDataset]:
    """The fifth dataset: ``day/<pid>/*.png`` (cam 1, visible), ``night/<pid>/*.png`` (cam 2,
    infrared), ``test_ids.txt``; every other id trains. Protocol: infrared queries against a
    seeded single-shot visible gallery (headline), then visible queries against every
    infrared image."""

    class DuskCam(VIReIDDataset):
        label = "DuskCam"
        layout = "day/<pid>/, night/<pid>/ and test_ids.txt"
        headline = "infrared-to-visible"
        rule = RankingRule("duskcam", skip="none", dedup_cmc=True)

        def _records(self, ids: Sequence[int] | None) -> list[ImageRecord]:
            out = []
            for folder, cam, modality in (("day", 1, VISIBLE), ("night", 2, INFRARED)):
                for pid_dir in sorted((Path(self.root) / folder).iterdir()):
                    pid = int(pid_dir.name)
                    if ids is None or pid in ids:
                        out += [ImageRecord(str(pid_dir / f), pid, cam, modality)
                                for f in list_images(str(pid_dir))]
            return sort_records(out)

        def _test_ids(self) -> list[int]:
            return read_id_file(str(Path(self.root) / "test_ids.txt"), self.title())

        def _load(self) -> None:
            test_ids = self._test_ids()
            if self.need_train:
                self.train = relabel([r for r in self._records(None) if r.pid not in test_ids])
            self.test_sets = by_modality(self._records(test_ids))

        def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]],
                     split: str = "test", trials: Sequence[int] | None = None,
                     monitor: bool = False, **options: Any
                     ) -> tuple[list[Setting], dict[str, Any]]:
            trials = tuple(trials or range(1, cfg.TEST.NUM_TRIALS + 1))
            out = [Setting("infrared-to-visible", "infrared", "visible", self.rule, trials,
                           seeded_gallery(sets["visible"], (1,)))]
            if not monitor:
                out.append(Setting("visible-to-infrared", "visible", "infrared", self.rule,
                                   (1,)))
            return out, {"gallery_sampling": "random", "gallery_trials": list(trials),
                         "trial_note": "trial t = random.seed(t - 1)"}

    return DuskCam


def registered(name: str, cls: type[VIReIDDataset]) -> Iterator[type[VIReIDDataset]]:
    """Fixture body: ``cls`` registered as ``name`` for one test, the registry restored after."""
    before = dict(DATASETS)
    yield register_dataset(name)(cls)
    del DATASETS[name]
    assert DATASETS == before


@pytest.fixture
def duskcam() -> Iterator[type[VIReIDDataset]]:
    yield from registered(NAME, define_duskcam())


def define_duskfolds() -> type[VIReIDDataset]:
    """DuskCam in two fixed train/test splits, ``test_ids_<fold>.txt``: one model per fold."""

    class DuskFolds(define_duskcam()):
        label = "DuskFolds"
        split_trials = 2
        split_key = "fold"

        def _test_ids(self) -> list[int]:
            return read_id_file(str(Path(self.root) / f"test_ids_{self.cfg.DATA.TRIAL}.txt"),
                                self.title())

        def settings(self, cfg: CfgNode, sets: dict[str, list[ImageRecord]], *args: Any,
                     **kwargs: Any) -> tuple[list[Setting], dict[str, Any]]:
            settings, info = super().settings(cfg, sets, *args, **kwargs)
            return settings, {**info, self.split_key: cfg.DATA.TRIAL}

    return DuskFolds


@pytest.fixture
def duskfolds() -> Iterator[type[VIReIDDataset]]:
    yield from registered(FOLDS, define_duskfolds())


@pytest.fixture(scope="module")
def duskcam_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 ids, 3 day + 3 night 32x16 images each; each id has its own colour."""
    root = tmp_path_factory.mktemp("duskcam")
    rng = np.random.default_rng(0)
    for pid in (*TRAIN_IDS, *TEST_IDS):
        colour = rng.integers(0, 256, 3)
        for folder, scale in (("day", 1.0), ("night", 0.5)):
            (root / folder / str(pid)).mkdir(parents=True)
            for n in range(IMAGES):
                noise = rng.integers(-30, 30, (32, 16, 3))
                pixels = np.clip(colour * scale + noise, 0, 255).astype(np.uint8)
                if folder == "night":
                    pixels[:] = pixels.mean(axis=2, keepdims=True).astype(np.uint8)
                Image.fromarray(pixels).save(root / folder / str(pid) / f"{n:02d}.png")
    (root / "test_ids.txt").write_text(",".join(map(str, TEST_IDS)) + "\n")
    (root / "test_ids_1.txt").write_text(",".join(map(str, TEST_IDS)) + "\n")
    (root / "test_ids_2.txt").write_text(",".join(map(str, TRAIN_IDS[:4])) + "\n")
    return root


def train(tmp_path: Path, root: Path, *extra: str, name: str = NAME,
          args: Sequence[str] = ()) -> dict[str, Any]:
    """train.py on ``name`` into ``tmp_path/run``; returns its results.json (or summary.json
    for several split trials)."""
    ini = tmp_path / "run.ini"
    ini.write_text("[DATA]\nNUM_WORKERS = 0\n")
    assert train_main("train.py", None, ["--config", str(ini), *args,
                                         *tiny_training(name, root, tmp_path / "run",
                                                        "TEST.NUM_TRIALS", "3",
                                                        *extra)]) == 0
    written = tmp_path / "run" / ("summary.json" if args else "results.json")
    return json.loads(written.read_text())


def run_test_script(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
                    *argv: str) -> tuple[int, str, str]:
    return run_script(SCRIPT, monkeypatch, capsys, *argv)


def test_the_name_is_valid_only_while_registered(duskcam, duskcam_root):
    cfg = load_config(None, ["DATA.DATASET_NAME", NAME, "DATA.ROOT", str(duskcam_root)])
    assert cfg.DATA.DATASET_NAME == NAME and duskcam.name == NAME
    ds = DATASETS[NAME](cfg.DATA.ROOT, cfg, verbose=False)
    assert ds.num_classes == len(TRAIN_IDS)
    assert sorted({r.pid for r in ds.train}) == list(range(len(TRAIN_IDS)))
    assert {r.pid for r in ds.eval_sets()["infrared"]} == set(TEST_IDS)
    assert len(ds.eval_sets()["visible"]) == len(TEST_IDS) * IMAGES
    del DATASETS[NAME]
    try:
        with pytest.raises(UserError, match=f"DATA.DATASET_NAME = '{NAME}' is not a known"):
            load_config(None, ["DATA.DATASET_NAME", NAME])
    finally:
        DATASETS[NAME] = duskcam


def test_train_py_and_test_py_run_its_protocol(duskcam, duskcam_root, tmp_path, monkeypatch,
                                               capsys):
    res = train(tmp_path, duskcam_root)
    assert res["dataset"] == NAME and res["selection"]["select"] == "last"
    assert list(res["settings"]) == ["infrared-to-visible", "visible-to-infrared"]
    assert res["headline"]["setting"] == "infrared-to-visible"
    head = res["settings"]["infrared-to-visible"]
    assert head["rule"] == "duskcam"
    assert [t["trial"] for t in head["trials"]] == [1, 2, 3]
    # Single-shot, one camera: one gallery image per test id; queries: every night image.
    assert head["gallery"] == len(TEST_IDS) and head["query"] == len(TEST_IDS) * IMAGES
    assert res["settings"]["visible-to-infrared"]["gallery"] == len(TEST_IDS) * IMAGES
    assert res["protocol"]["gallery_trials"] == [1, 2, 3]
    assert res["headline"]["R1"] == head["mean"]["R1"]
    ckpt = tmp_path / "run" / "last.pth"

    code, out, err = run_test_script(monkeypatch, capsys, "--model_path", str(ckpt),
                                     "--trial", "2", "--output", str(tmp_path / "t.json"))
    assert code == 0, err
    tested = json.loads((tmp_path / "t.json").read_text())
    assert "trained_on" not in tested and tested["dataset"] == NAME
    assert [t["trial"] for t in tested["settings"]["infrared-to-visible"]["trials"]] == [2]
    # The same model and gallery as trial 2 of training's final test.
    assert tested["settings"]["infrared-to-visible"]["trials"][0] == head["trials"][1]
    assert "gallery random, trial t = random.seed(t - 1)" in out

    code, _, err = run_test_script(monkeypatch, capsys, "--model_path", str(ckpt),
                                   "--mode", "all")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == "error: --mode applies to SYSU-MM01 only; the config's dataset is DuskCam"


def test_select_val_with_held_out_ids(duskcam, duskcam_root, tmp_path):
    res = train(tmp_path, duskcam_root, "DATA.VAL_IDS", "2", "TRAIN.SELECT", "val",
                "TRAIN.EVAL_PERIOD", "1")
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r["eval"] for r in rows]
    assert [e["split"] for e in evals] == ["val", "val"]
    for e in evals:  # the protocol's monitoring form: the headline only
        assert set(e) - {"split", "purpose", "score", "time_s"} == {"infrared-to-visible"}
        assert e["score"] == e["infrared-to-visible"]["R1"]
    best = max(range(2), key=lambda i: (evals[i]["score"], -i)) + 1
    assert res["selection"] == {"select": "val", "epoch": best,
                                "note": "model selection on the held-out val ids",
                                "best_metric": evals[best - 1]["score"]}
    assert res["checkpoint"].endswith("best.pth")
    assert list(res["settings"]) == ["infrared-to-visible", "visible-to-infrared"]


def test_a_dataset_in_fixed_splits_trains_and_tests_one_model_per_split(
        duskfolds, duskcam_root, tmp_path, monkeypatch, capsys):
    summary = train(tmp_path, duskcam_root, "TRAIN.MAX_EPOCHS", "1", "TEST.NUM_TRIALS", "1",
                    name=FOLDS, args=["--trial", "all"])
    assert summary["trials"] == [1, 2]
    assert summary["results"]["protocol"]["fold"] == [1, 2]
    assert set(summary["summary"]) == {"infrared-to-visible", "visible-to-infrared"}
    per_fold = [json.loads((tmp_path / "run" / f"trial_{t}" / "results.json").read_text())
                for t in (1, 2)]
    assert [r["protocol"]["fold"] for r in per_fold] == [1, 2]
    r1 = [r["settings"]["infrared-to-visible"]["mean"]["R1"] for r in per_fold]
    assert summary["summary"]["infrared-to-visible"]["R1"]["values"] == r1

    template = str(tmp_path / "run" / "trial_{trial}" / "last.pth")
    code, _, err = run_test_script(monkeypatch, capsys, "--model_path", template, "--trial",
                                   "all", "--output", str(tmp_path / "t.json"))
    assert code == 0, err
    tested = json.loads((tmp_path / "t.json").read_text())
    assert tested["protocol"]["fold"] == [1, 2]
    assert tested["settings"]["infrared-to-visible"]["mean"]["R1"] == pytest.approx(
        float(np.mean(r1)), abs=1e-3)
    # Fold 1's model on fold 2's test ids would be tested on its training ids.
    code, _, err = run_test_script(monkeypatch, capsys, "--model_path",
                                   template.replace("{trial}", "1"), "--trial", "2")
    assert code == 2 and "trained on DuskFolds trial 1; testing it on trial 2" in err


# ------------------------------------------------------------------ the engine never asks
DATASET_NAMES = ("regdb", "sysumm", "llcm")
NAME_ATTRIBUTES = ("name", "label", "DATASET_NAME")


def _docstrings(tree: ast.AST) -> set[int]:
    nodes = [tree, *ast.walk(tree)]
    return {id(n.body[0].value) for n in nodes
            if isinstance(n, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and n.body and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)}


def _is_text(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str)
    return isinstance(node, ast.Tuple | ast.List | ast.Set) and any(map(_is_text, node.elts))


def name_checks(source: str, where: str) -> list[str]:
    """Places where code tells datasets apart by name: a dataset name in a string (outside
    docstrings), a ``.name``/``.label``/``DATASET_NAME`` compared with text, ``x.name == ...``
    on a dataset, or an import of one dataset's module."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    found = []
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', 0)}"
        if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                and id(node) not in docs
                and any(n in node.value for n in DATASET_NAMES)):
            found.append(f"{line} string {node.value!r}")
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            named = [o for o in operands
                     if isinstance(o, ast.Attribute) and o.attr in NAME_ATTRIBUTES]
            on_dataset = [o for o in named if o.attr == "name"
                          and "dataset" in ast.unparse(o.value).lower()]
            if (named and any(map(_is_text, operands))) or on_dataset:
                found.append(f"{line} comparison {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module in (
                "data.regdb", "data.sysu", "data.llcm"):
            found.append(f"{line} import from {node.module}")
        elif isinstance(node, ast.Import) and any(
                a.name in ("data.regdb", "data.sysu", "data.llcm") for a in node.names):
            found.append(f"{line} import of a dataset module")
    return found


def test_the_check_finds_name_based_code():
    source = ('"""Docstrings may say sysumm."""\n'
              'from data.sysu import SYSUMM01\n'
              'if dataset.name == other:\n    pass\n'
              'if cfg.DATA.DATASET_NAME in ("a", "b"):\n    pass\n'
              'x = "llcm"\n')
    found = name_checks(source, "x.py")
    assert [f.split(" ", 1)[1] for f in found] == [
        "import from data.sysu", "comparison dataset.name == other",
        "comparison cfg.DATA.DATASET_NAME in ('a', 'b')", "string 'llcm'"]


def test_engine_never_tells_datasets_apart_by_name():
    found = []
    for path in sorted((REPO / "engine").glob("*.py")):
        found += name_checks(path.read_text(encoding="utf-8"), path.name)
    assert not found, found
