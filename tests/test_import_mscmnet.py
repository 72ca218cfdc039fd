"""Importing a released MSCMNet checkpoint: key table, strictness, features, test.py.

The released file is built from the published key/shape table (published_tables.py)
for a 128x64 input, whose 8x4 layer3 map keeps the published 32 heads.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from published_tables import mscmnet_keys
from torch import nn

from data.transforms import Normalize, load_image, to_chw
from engine.checkpoint import load_checkpoint
from engine.tester import load_model
from modeling import build_model
from modeling.importer import convert, published_test_keys
from modeling.published import key_table
from tests.test_import_checkpoint import IMPORT_TOOL, TEST_SCRIPT, released_file
from utils.config import config_from_ini_text, load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "mscmnet" / "sysumm.ini"
SIZE = ["DATA.SIZE_TRAIN", "128,64", "DATA.SIZE_TEST", "128,64"]
CLASSES = 5

pytestmark = pytest.mark.usefixtures("one_thread")

UNUSED_GROUPS = {  # label prefix -> tensors
    **{f"{s}.layer1..4": 312 for s in ("visible_module.visible", "visible_moduleA.visible",
                                        "thermal_module.thermal", "thermal_moduleA.thermal")},
    "base_resnet.base.conv1/bn1": 6, "local_conv": 1, "feat_bn2d": 5,
    "layerATT0.ATT_narrow2": 2, "layerATT1.ATT_narrow2": 2, "layerATT2.ATT_narrow1": 2,
    "layerATT3.ATT_narrow1": 2, "layerATT3.ATT_narrow2": 2, "layerATT3.ln_1o": 2,
}


def cfg(*extra: str):
    return load_config(CONFIG, ["MODEL.PRETRAIN_PATH", "", *SIZE, *extra])


def small_input(root: Path):
    """Two visible (cam1) and two infrared (cam3) synthetic images, normalised: the
    randomised network's BatchNorm statistics come from images like test.py's."""
    paths = [sorted((root / cam).rglob("*.jpg"))[i] for cam, i in
             (("cam1", 0), ("cam3", 0), ("cam3", 5), ("cam1", 5))]
    norm = Normalize(cfg())
    img = torch.stack([norm(to_chw(load_image(str(p), (128, 64)))) for p in paths])
    return img, torch.tensor([0, 1, 1, 0])


def randomise(model: nn.Module, seed: int, root: Path) -> None:
    """Every tensor off its init; BN statistics from one 2-view batch."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name != "pool.p" and t.is_floating_point():
                spread = float(t.std()) if t.numel() > 1 else 0.0
                t.add_((0.1 * spread or 0.05) * torch.randn(t.shape, generator=g))
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        img, modality = small_input(root)
        model(torch.cat([img, img]), torch.cat([modality, modality]),
              torch.tensor([0] * 4 + [1] * 4))
        for m in norms:
            m.momentum = 0.1


@pytest.fixture(scope="module")
def imported(tmp_path_factory, sysu_root):
    folder = tmp_path_factory.mktemp("mscmnet")
    torch.manual_seed(0)
    model = build_model(cfg(), CLASSES)
    randomise(model, seed=2, root=sysu_root)
    model.eval()
    with torch.no_grad():
        reference = model(*small_input(sysu_root))
    table, _ = key_table(model)
    published = mscmnet_keys(CLASSES, (8, 4))
    own = model.state_dict()
    inverse = {pub: ours for ours, pub in table.items()}
    g = torch.Generator().manual_seed(3)
    net = {pub: own[inverse[pub]].clone() if pub in inverse
           else torch.tensor(0) if pub.endswith("num_batches_tracked")
           else torch.randn(shape, generator=g) for pub, shape in published.items()}
    src = released_file(net, folder / "released.t")
    out = folder / "imported.pth"
    stdout = io.StringIO()
    argv = ["import_checkpoint.py", "--from", "mscmnet", str(src), "--config", str(CONFIG),
            "--out", str(out), "MODEL.PRETRAIN_PATH", "", *SIZE]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout), \
            pytest.raises(SystemExit) as exc:
        IMPORT_TOOL.main()
    assert exc.value.code == 0
    return {"path": out, "summary": stdout.getvalue(), "table": table, "reference": reference,
            "published": published, "net": net, "input": small_input(sysu_root)}


def test_import_is_strict_bijective_and_gives_the_same_features(imported):
    table, published = imported["table"], imported["published"]
    never = [f"{s}.layer" for s in ("visible_module.visible", "visible_moduleA.visible",
                                     "thermal_module.thermal", "thermal_moduleA.thermal")]
    never += ["base_resnet.base.conv1.", "base_resnet.base.bn1.", "local_conv.", "feat_bn2d.",
              "layerATT0.ATT_narrow2.", "layerATT1.ATT_narrow2.", "layerATT2.ATT_narrow1.",
              "layerATT3.ATT_narrow1.", "layerATT3.ATT_narrow2.", "layerATT3.ln_1o."]
    unused = {k for k in published if k.startswith(tuple(never))}
    assert len(unused) == sum(UNUSED_GROUPS.values())
    assert len(set(table.values())) == len(table)
    assert set(table.values()) == set(published) - unused
    spots = {"front.visible_aux.0.weight": "visible_moduleA.visible.conv1.weight",
             "front.infrared.1.running_mean": "thermal_module.thermal.bn1.running_mean",
             "shared.layer3.stage.non_local.2.g.weight": "NL_3.2.g.0.weight",
             "shared.layer3.stage.blocks.5.conv3.weight": "base_resnet.base.layer3.5.conv3.weight",
             "shared.layer3.attention.blocks.0.earlier_narrow.weight":
                 "layerATT0.ATT_narrow1.weight",
             "shared.layer3.attention.blocks.2.earlier_narrow.bias": "layerATT2.ATT_narrow2.bias",
             "shared.layer4.blocks.0.downsample.0.weight":
                 "base_resnet.base.layer4.0.downsample.0.weight",
             "neck.weight": "bottleneck.weight"}
    for ours, pub in spots.items():
        assert table[ours] == pub
    ckpt = load_checkpoint(imported["path"])
    assert set(ckpt["model"]) == set(table) | {"pool.p"}
    for ours, pub in table.items():
        assert tuple(ckpt["model"][ours].shape) == published[pub], ours
    summary = imported["summary"]
    assert (f"{len(published) - len(unused)} from the file's {len(published)}, pool.p from "
            f"the config; {CLASSES} classes") in summary
    for group, n in UNUSED_GROUPS.items():
        assert re.search(rf"unused, as expected: {re.escape(group)}.*: {n} tensors", summary), \
            (group, summary)
    assert "TEST keys already matched" in summary
    config = config_from_ini_text(ckpt["config"])
    for key, value in published_test_keys("mscmnet").items():
        section, k = key.split(".")
        assert config[section][k] == value
    model = load_model(config, ckpt, str(imported["path"])).eval()
    with torch.no_grad():
        feats = model(*imported["input"])
    assert torch.isfinite(feats).all() and torch.equal(feats, imported["reference"])


def test_full_size_network_has_the_published_shapes_and_count():
    """At 384x192 every tensor the published forward uses has its published shape, and
    the network holds the published 42,855,488 trainable-at-test-plus-classifier values."""
    model = build_model(load_config(CONFIG, ["MODEL.PRETRAIN_PATH", ""]), 395)
    table, own_only = key_table(model)
    published = mscmnet_keys(395)
    own = model.state_dict()
    assert own_only == ["pool.p"]
    assert all(tuple(own[k].shape) == published[p] for k, p in table.items())
    assert sum(p.numel() for p in model.parameters()) == 42_855_488


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_other_networks_sources_and_sizes_are_one_line(imported):
    net = imported["net"]
    with pytest.raises(UserError) as exc:
        convert("mscmnet", net, load_config(REPO / "configs/agw/sysumm.ini",
                                            ["MODEL.PRETRAIN_PATH", ""]), where="agw.ini")
    assert re.search(r"agw.ini does not build MSCMNet's network .*MSCMNET.FOUR_STEMS = no "
                     r"\(expected yes\)", one_line(exc))
    with pytest.raises(UserError) as exc:
        convert("agw", net, cfg())
    assert "--from agw, but the file holds MSCMNet's network" in one_line(exc)
    assert "use --from mscmnet" in one_line(exc)
    with pytest.raises(UserError) as exc:
        convert("mscmnet", net, cfg("DATA.SIZE_TRAIN", "256,128", "DATA.SIZE_TEST", "256,128"),
                where="sysumm.ini")
    assert re.search(r"its attention blocks take a layer3 map of 32 positions .*sysumm.ini's "
                     r"DATA.SIZE_TRAIN 256,128 gives 128", one_line(exc))


def test_test_script_runs_on_the_imported_model(imported, sysu_root, tmp_path, monkeypatch,
                                                capsys):
    argv = ["test.py", "--model_path", str(imported["path"]), "--output", str(tmp_path / "r.json"),
            "--save_features", str(tmp_path / "f.npz"), "DATA.ROOT", str(sysu_root),
            "DATA.NUM_WORKERS", "0", "DATA.VERIFY_IMAGES", "no", "MODEL.DEVICE", "cpu",
            "TEST.NUM_TRIALS", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        TEST_SCRIPT.main()
    _, err = capsys.readouterr()
    assert exc.value.code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    checked = [key for key, value in published_test_keys("mscmnet").items()
               if key.split(".")[1].lower() in res["protocol"]
               and res["protocol"][key.split(".")[1].lower()] == value]
    assert "TEST.FLIP" in checked
    feats = np.load(tmp_path / "f.npz")
    assert all(feats[k].shape[1] == 2048 for k in feats.files if k.endswith("_feat"))
