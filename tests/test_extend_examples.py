"""The examples of docs/extending.md, run as written: a dataset, a backbone and a method (a
module after layer3 and a loss on its output, in one Python file and one .ini) each
become valid configuration names and work through the engine."""
from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

import data
import modeling.backbone
from data import DATASETS
from engine.evaluate import evaluate
from layers.criterion import LOSS_TERMS, build_criterion
from modeling import BACKBONES, build_model
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.registry import Registry

REPO = Path(__file__).resolve().parents[1]
SMALL = ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu",
         "DATA.SIZE_TEST", "32,16", "DATA.NUM_WORKERS", "0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def extend_examples() -> list[str]:
    """The python blocks of docs/extending.md: dataset, backbone, method."""
    text = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", text, re.S)]
    assert len(blocks) == 3
    return blocks


@contextmanager
def run_example(code: str, registry: Registry, namespace: dict) -> Iterator[set[str]]:
    """Execute an example; yield the names it registered and remove them afterwards."""
    before = set(registry)
    try:
        exec(compile(code, "docs/extending.md", "exec"), namespace)
        yield set(registry) - before
    finally:
        for name in set(registry) - before:
            del registry[name]


def write_mydata(root: Path) -> None:
    """The example's layout: idx/{train,test}.txt, vis/ (camera 1) and ir/ (camera 2)."""
    rng = np.random.default_rng(0)
    for split, pids in (("train", range(1, 7)), ("test", range(7, 10))):
        lines = []
        for pid in pids:
            for band in ("vis", "ir"):
                for n in range(2):
                    rel = f"{band}/{pid:04d}/{n}.png"
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(
                        root / rel)
                    lines.append(f"{rel} {pid}")
        (root / "idx").mkdir(exist_ok=True)
        (root / "idx" / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_dataset_example(tmp_path):
    write_mydata(tmp_path)
    with run_example(extend_examples()[0], DATASETS, {"__name__": "data.mydata"}) as added:
        assert added == {"mydata"}
        cfg = load_config(None, ["DATA.DATASET_NAME", "mydata", "DATA.ROOT", str(tmp_path),
                                 "DATA.VAL_IDS", "2", "TEST.NUM_TRIALS", "2", *SMALL])
        ds = data.build_dataset(cfg, verbose=False)
        assert ds.num_classes == 4 and ds.has_val
        assert {(r.cam, r.modality) for r in ds.test_sets["visible"]} == {(1, VISIBLE)}
        assert {(r.cam, r.modality) for r in ds.test_sets["infrared"]} == {(2, INFRARED)}
        torch.manual_seed(0)
        model = build_model(cfg, ds.num_classes).eval()
        res = evaluate(cfg, model, ds)
        assert list(res["settings"]) == ["infrared-to-visible", "visible-to-infrared"]
        assert res["headline"]["setting"] == "infrared-to-visible"
        head = res["settings"]["infrared-to-visible"]
        assert head["rule"] == "mydata" and [t["trial"] for t in head["trials"]] == [1, 2]
        assert (head["query"], head["gallery"]) == (6, 3)  # one image per id of camera 1
        assert res["settings"]["visible-to-infrared"]["gallery"] == 6  # every infrared image
        assert evaluate(cfg, model, ds, split="val")["settings"]["infrared-to-visible"][
            "gallery"] == 2
        test_only = data.build_dataset(cfg, verbose=False, need_train=False)
        assert test_only.train == [] and test_only.test_sets == ds.test_sets
    with pytest.raises(UserError, match="'mydata' is not a known dataset"):
        load_config(None, ["DATA.DATASET_NAME", "mydata"])


def test_backbone_example(monkeypatch):
    with run_example(extend_examples()[1], BACKBONES, dict(vars(modeling.backbone))) as added:
        assert added == {"mobilenet_v3_large"}
        for last_stride, side in ((1, 2), (2, 1)):
            cfg = load_config(None, ["MODEL.NAME", "mobilenet_v3_large", "MODEL.PRETRAIN_PATH",
                                     "", "MODEL.LAST_STRIDE", str(last_stride)])
            backbone = BACKBONES["mobilenet_v3_large"](cfg)
            x = torch.randn(1, 3, 32, 32)
            with torch.no_grad():
                for channels, stage in zip(backbone.channels, (backbone.stem, *backbone.layers)):
                    x = stage.eval()(x)
                    assert x.shape[1] == channels
            assert x.shape[2:] == (side, side)

        asked = []

        def fake_download(url, **kwargs):
            asked.append(url)
            return torchvision.models.mobilenet_v3_large(weights=None).state_dict()

        monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
        cfg = load_config(None, ["MODEL.NAME", "mobilenet_v3_large", "MODEL.PRETRAIN_PATH",
                                 "imagenet", "MODEL.SHARED_FROM", "2",
                                 "MODEL.NON_LOCAL_BLOCKS", "0, 1, 1, 0"])
        model = build_model(cfg, 3).eval()
        assert asked == [torchvision.models.MobileNet_V3_Large_Weights.IMAGENET1K_V1.url]
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32), torch.tensor([0, 1])).shape == (2, 960)


def extend_ini() -> str:
    """The .ini block of docs/extending.md (the method's recipe)."""
    text = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    (block,) = re.findall(r"```ini\n(.*?)```", text, re.S)
    return textwrap.dedent(block)


def test_method_example(tmp_path, regdb_root):
    from engine.launch import train_main
    from modeling.stages import INSERTIONS
    from solver import build_optimizer
    from tests.helpers import tiny_training
    from utils.config_schema import remove_config_section

    namespace = {"__name__": "modeling.methods.spatial_attention"}
    try:
        exec(compile(extend_examples()[2], "README.md", "exec"), namespace)
        configs = tmp_path / "configs"
        (configs / "attention").mkdir(parents=True)
        (configs / "agw").symlink_to(REPO / "configs" / "agw")
        ini = configs / "attention" / "regdb.ini"
        ini.write_text(extend_ini())
        overrides = tiny_training("regdb", regdb_root, tmp_path / "run", "AGW.NON_LOCAL_BLOCKS",
                                  "0, 1, 1, 0", "TRAIN.MAX_EPOCHS", "1", "TRAIN.EVAL_PERIOD", "0")
        cfg = load_config(ini, overrides)
        assert cfg.ATTENTION.AFTER == 3 and cfg.LOSS.TERMS == ("id", "wrt", "attention")
        model = build_model(cfg, 4)
        names = [n for n, _ in model.named_parameters() if ".attention." in n]
        assert names and all(n.startswith("shared.layer3.") for n in names)
        criterion = build_criterion(cfg, 4, model.feat_dim)
        groups = build_optimizer(cfg, model, criterion).param_groups
        ids = {id(p) for n, p in model.named_parameters() if n in names}
        declared = [g for g in groups if ids & {id(p) for p in g["params"]}]
        assert {g["name"] for g in declared} <= {"new", "new_bias"}
        assert all(g["lr"] == pytest.approx(cfg.TRAIN.BASE_LR * cfg.TRAIN.NEW_LR_FACTOR)
                   for g in declared)
        backbone = next(g for g in groups if g["name"] == "backbone")
        assert backbone["lr"] == pytest.approx(cfg.TRAIN.BASE_LR) != declared[0]["lr"]
        train_main("train.py", None, ["--config", str(ini), *overrides])
        lines = (tmp_path / "run" / "trial_1" / "metrics.jsonl").read_text().splitlines()
        assert '"loss_attention"' in lines[-1]
    finally:
        remove_config_section("ATTENTION")
        INSERTIONS.pop("spatial_attention", None)
        LOSS_TERMS.pop("attention", None)
    with pytest.raises(UserError, match="unknown section"):
        load_config(ini, overrides)
