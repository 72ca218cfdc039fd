"""Importing released AGW / CAJ / DEEN checkpoints: key tables, strictness, features,
test.py on the result, bad files, and MODEL.PRETRAIN_PATH from a checkpoint of ours.

The published key names and shapes are tables in published_tables.py, written from
the authors' model.py and resnet.py (no published code is needed); the released files
are built from them.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from published_tables import SPOT_CHECKS, agw_keys, deen_keys, expected_unused, resnet50
from torch import nn

from engine.checkpoint import check_resume_compatible, load_checkpoint
from engine.tester import load_model
from modeling import build_model
from modeling.importer import convert, published_test_keys, read_released
from modeling.published import key_table
from utils.config import config_from_ini_text, load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"

pytestmark = pytest.mark.usefixtures("one_thread")


def _load_script(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


IMPORT_TOOL = _load_script("import_checkpoint_tool", REPO / "tools" / "import_checkpoint.py")
TEST_SCRIPT = _load_script("vireid_test_script_import", REPO / "test.py")


@dataclass(frozen=True)
class Variant:
    source: str
    config: str
    classes: int
    regdb_net: bool

    def keys(self) -> dict[str, tuple[int, ...]]:
        return (agw_keys(self.classes) if self.source != "deen"
                else deen_keys(self.classes, self.regdb_net))


VARIANTS = {"agw": Variant("agw", "agw/sysumm", 395, False),
            "caj": Variant("caj", "caj/regdb", 206, False),
            "deen": Variant("deen", "deen/llcm", 713, False),
            "deen-regdb": Variant("deen", "deen/regdb", 206, True)}


def parameters(keys: dict[str, tuple[int, ...]]) -> int:
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    return sum(int(np.prod(s)) for k, s in keys.items() if not k.endswith(buffers))


def test_published_tables_match_the_published_counts():
    """Entry and parameter counts of the published modules, as built from their code."""
    assert len(resnet50("x")) == 318
    assert len(agw_keys(395)) == 1025 and parameters(agw_keys(395)) == 71_365_839
    assert parameters(agw_keys(206)) == 70_978_767
    assert len(deen_keys(395, regdb=False)) == 1048
    assert parameters(deen_keys(395, regdb=False)) == 89_044_320
    assert parameters(deen_keys(713, regdb=False)) == 89_695_584
    assert len(deen_keys(206, regdb=True)) == 1022
    assert parameters(deen_keys(206, regdb=True)) == 75_065_440


# ------------------------------------------------------------- building released files
def randomise(model: nn.Module, seed: int) -> None:
    """Move every tensor off its init (the zero-initialised BNs of the inserted blocks
    too), then set the BN statistics to those of one batch, so that activations stay
    finite through the randomised blocks."""
    g = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name == "pool.p" or not t.is_floating_point():
                continue
            spread = float(t.std()) if t.numel() > 1 else 0.0
            t.add_((0.1 * spread or 0.05) * torch.randn(t.shape, generator=g))
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # running statistics = this batch's
        model.train()
        model(*small_input())
        for m in norms:
            m.momentum = 0.1
            m.num_batches_tracked.fill_(int(torch.randint(1, 1000, (), generator=g)))


def released_file(net: dict[str, torch.Tensor], path: Path) -> Path:
    """The authors' layout: train.py saves these five entries."""
    torch.save({"net": net, "cmc": np.linspace(0.47, 0.9, 20, dtype=np.float32),
                "mAP": np.float64(0.4765), "mINP": np.float64(0.353), "epoch": 60}, path)
    return path


def small_input() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 32, generator=g), torch.tensor([0, 1, 1, 0])


@dataclass
class Imported:
    variant: Variant
    path: Path
    summary: str
    table: dict[str, str]
    reference: torch.Tensor  # eval-mode features of the model the file was made from
    published: dict[str, tuple[int, ...]]


def _make_and_import(variant: Variant, folder: Path) -> Imported:
    config = CONFIGS / f"{variant.config}.ini"
    torch.manual_seed(0)
    model = build_model(load_config(config, ["MODEL.PRETRAIN_PATH", ""]), variant.classes)
    randomise(model, seed=2)
    model.eval()
    with torch.no_grad():
        reference = model(*small_input())
    table, _ = key_table(model)
    published = variant.keys()
    own = model.state_dict()
    inverse = {pub: ours for ours, pub in table.items()}
    g = torch.Generator().manual_seed(3)
    net = {}
    for pub, shape in published.items():
        if pub in inverse:
            net[pub] = own[inverse[pub]].clone()
        elif pub.endswith("num_batches_tracked"):
            net[pub] = torch.tensor(0)
        else:
            net[pub] = torch.randn(shape, generator=g)
    del model, own
    src = released_file(net, folder / "released.t")
    del net
    out = folder / "imported.pth"
    stdout = io.StringIO()
    argv = ["import_checkpoint.py", "--from", variant.source, str(src), "--config", str(config),
            "--out", str(out)]
    with mock.patch.object(sys, "argv", argv), contextlib.redirect_stdout(stdout), \
            pytest.raises(SystemExit) as exc:
        IMPORT_TOOL.main()
    assert exc.value.code == 0
    src.unlink()
    return Imported(variant, out, stdout.getvalue(), table, reference, published)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    cache: dict[str, Imported] = {}

    def get(name: str) -> Imported:
        if name not in cache:
            cache[name] = _make_and_import(VARIANTS[name], tmp_path_factory.mktemp(name))
        return cache[name]

    return get


# ------------------------------------------------------------------- the import itself
@pytest.mark.parametrize("name", list(VARIANTS))
def test_import_is_strict_bijective_and_gives_the_same_features(imported, name):
    item = imported(name)
    v, table, published = item.variant, item.table, item.published
    # The table is a bijection from our keys onto the published keys the forward uses.
    unused = expected_unused(published, v.regdb_net)
    assert len(set(table.values())) == len(table)
    assert set(table.values()) == set(published) - unused
    for ours, pub in SPOT_CHECKS[name].items():
        assert table[ours] == pub
    ckpt = load_checkpoint(item.path)
    assert set(ckpt["model"]) == set(table) | ({"pool.p"} if v.source != "deen" else set())
    for ours, pub in table.items():
        assert tuple(ckpt["model"][ours].shape) == published[pub], ours
    # Everything reported: used, unused by group, the file's own entries.
    used = len(published) - len(unused)
    config = ", pool.p from the config" if v.source != "deen" else ""
    assert f"{used} from the file's {len(published)}{config}; {v.classes} classes" \
        in item.summary
    assert "(file: epoch 60, mAP 0.4765, mINP 0.353)" in item.summary
    groups = {"visible_module.visible.layer1..4": 312, "thermal_module.thermal.layer1..4": 312,
              "base_resnet.base.conv1/bn1": 6}
    if v.regdb_net:
        groups["base_resnet.base.layer4"] = 60
    for group, n in groups.items():
        assert re.search(rf"unused, as expected: {re.escape(group)} .*: {n} tensors",
                         item.summary), (group, item.summary)
    assert sum(ckpt["source"]["unused"].values()) == len(unused) == sum(groups.values())
    assert ckpt["source"]["entries"]["epoch"] == 60 and ckpt["epoch"] == 61
    assert ckpt["source"]["entries"]["cmc"][0] == pytest.approx(0.47)
    assert ckpt["num_classes"] == v.classes
    # The configs already hold the authors' test keys; the saved config has them too.
    assert "TEST keys already matched" in item.summary
    cfg = config_from_ini_text(ckpt["config"])
    assert cfg.MODEL.PRETRAIN_PATH == ""
    for key, value in published_test_keys(v.source).items():
        section, k = key.split(".")
        assert cfg[section][k] == value
    # Features of the imported model = those of the model the file was made from.
    model = load_model(cfg, ckpt, str(item.path)).eval()
    with torch.no_grad():
        feats = model(*small_input())
    assert torch.isfinite(feats).all()
    assert torch.equal(feats, item.reference)


def full_net(name: str) -> dict[str, torch.Tensor]:
    v = VARIANTS[name]
    return {k: (torch.tensor(0) if k.endswith("num_batches_tracked") else torch.zeros(s))
            for k, s in v.keys().items()}


def agw_cfg():
    return load_config(CONFIGS / "agw/sysumm.ini", ["MODEL.PRETRAIN_PATH", ""])


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_missing_keys_shapes_and_foreign_tensors_are_refused_in_one_line():
    net = full_net("agw")
    cfg = agw_cfg()
    lacking = {k: v for k, v in net.items() if not k.startswith("NL_3.2.")}
    with pytest.raises(UserError) as exc:
        convert("agw", lacking, cfg)
    msg = one_line(exc)
    assert msg.startswith("the file lacks 12 tensor(s) of AGW/CAJ's network")
    assert "NL_3.2.theta.weight" in msg and "(+9 more)" in msg
    bad = dict(net)
    bad["NL_2.1.W.0.weight"] = torch.zeros(512, 2, 1, 1)
    with pytest.raises(UserError) as exc:
        convert("agw", bad, cfg)
    assert "NL_2.1.W.0.weight (512, 2, 1, 1) (expected (512, 1, 1, 1))" in one_line(exc)
    foreign = {**net, "NL_4.0.theta.weight": torch.zeros(1, 2048, 1, 1)}
    with pytest.raises(UserError) as exc:
        convert("agw", foreign, cfg)
    assert "has no place for: NL_4.0.theta.weight" in one_line(exc)


def test_a_config_or_source_of_another_network_is_refused_in_one_line():
    deen = full_net("deen-regdb")
    with pytest.raises(UserError) as exc:
        convert("deen", deen, agw_cfg(), where="configs/agw/sysumm.ini")
    msg = one_line(exc)
    assert msg.startswith("configs/agw/sysumm.ini does not build DEEN's RegDB network")
    assert "MODEL.POOLING = gem (expected avg)" in msg and "DEEN.MFA = 0, 0, 0, 0" in msg
    sysu_cfg = load_config(CONFIGS / "deen/sysumm.ini", ["MODEL.PRETRAIN_PATH", ""])
    with pytest.raises(UserError) as exc:
        convert("deen", deen, sysu_cfg)
    assert "MODEL.LAST_STAGE = 4 (expected 3)" in one_line(exc)
    with pytest.raises(UserError) as exc:
        convert("agw", deen, agw_cfg())
    assert "--from agw, but the file holds DEEN's RegDB network" in one_line(exc)
    with pytest.raises(UserError) as exc:
        convert("caj", {"conv1.weight": torch.zeros(64, 3, 7, 7)}, agw_cfg())
    assert "no published CAJ network" in one_line(exc)


def test_files_without_batch_counters_get_zero_counters():
    net = {k: v for k, v in full_net("agw").items() if not k.endswith("num_batches_tracked")}
    conv = convert("agw", net, agw_cfg())
    # 52 BNs in layer1..4, 2 stems, 5 non-local blocks, the BNNeck.
    assert len(conv.counters_zeroed) == 60
    assert all(int(t) == 0 for k, t in conv.state.items() if k.endswith("num_batches_tracked"))


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)


def test_released_layouts_bare_and_dataparallel_and_numpy1_files(tmp_path):
    t = torch.arange(3.0)
    torch.save({"module.a": t, "module.b": t}, tmp_path / "dp.t")
    net, extras = read_released(tmp_path / "dp.t")
    assert list(net) == ["a", "b"] and extras == {}
    released_file({"a": t}, tmp_path / "rel.t")
    net, extras = read_released(tmp_path / "rel.t")
    assert torch.equal(net["a"], t) and extras["epoch"] == 60 and extras["mAP"] == 0.4765
    assert len(extras["cmc"]) == 20 and isinstance(extras["cmc"][0], float)
    # Files written under numpy 1 name numpy.core.multiarray (numpy 2: numpy._core).
    with zipfile.ZipFile(tmp_path / "rel.t") as zin, \
            zipfile.ZipFile(tmp_path / "np1.t", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                assert b"numpy.core.multiarray" in data
            zout.writestr(info, data)
    net, extras = read_released(tmp_path / "np1.t")
    assert extras["mINP"] == 0.353 and torch.equal(net["a"], t)
    torch.save({"net": {"a": t, "b": [1, 2]}}, tmp_path / "odd.t")
    with pytest.raises(UserError, match="state dict of tensors"):
        read_released(tmp_path / "odd.t")


def test_whole_model_pickle_is_refused_by_the_tool_in_one_line(tmp_path, capsys):
    torch.save({"net": TinyNet(), "epoch": 3}, tmp_path / "whole.t")
    argv = ["import_checkpoint.py", "--from", "agw", str(tmp_path / "whole.t"), "--config",
            str(CONFIGS / "agw/sysumm.ini"), "--out", str(tmp_path / "out.pth")]
    with mock.patch.object(sys, "argv", argv), pytest.raises(SystemExit) as exc:
        IMPORT_TOOL.main()
    assert exc.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "pickled Python objects (" in lines[0] and "TinyNet" in lines[0]
    assert "torch.save({'net': model.state_dict()}, path)" in lines[0]
    assert not (tmp_path / "out.pth").exists()


# ------------------------------------------------------------ test.py on imported models
@pytest.mark.parametrize("name, root", [("agw", "sysu_root"), ("caj", "regdb_root"),
                                        ("deen", "llcm_root"), ("deen-regdb", "regdb_root")])
def test_test_script_runs_on_imported_models(imported, name, root, request, tmp_path,
                                             monkeypatch, capsys):
    item = imported(name)
    argv = ["test.py", "--model_path", str(item.path), "--output", str(tmp_path / "r.json"),
            "--save_features", str(tmp_path / "f.npz"), "--visualize", str(tmp_path / "pics"),
            "DATA.ROOT", str(request.getfixturevalue(root)), "DATA.SIZE_TEST", "32,16",
            "DATA.NUM_WORKERS", "0", "DATA.VERIFY_IMAGES", "no", "MODEL.DEVICE", "cpu",
            "TEST.NUM_TRIALS", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exc:
        TEST_SCRIPT.main()
    out, err = capsys.readouterr()
    assert exc.value.code == 0, err
    res = json.loads((tmp_path / "r.json").read_text())
    protocol = res["protocol"]
    for key, value in published_test_keys(item.variant.source).items():
        field = key.split(".")[1].lower()
        if protocol.get(field) is not None:  # views: only for an expanding network
            assert protocol[field] == (list(value) if isinstance(value, tuple) else value), key
    width = {"agw": 2048, "caj": 2048, "deen": 6 * 2048, "deen-regdb": 6 * 1024}[name]
    feats = np.load(tmp_path / "f.npz")
    assert all(feats[k].shape[1] == width for k in feats.files if k.endswith("_feat"))
    assert (tmp_path / "pics" / "cmc.png").is_file()
    assert list((tmp_path / "pics").glob("ranked_*.png"))


# --------------------------------------------------- MODEL.PRETRAIN_PATH = a checkpoint
def test_pretrain_path_naming_a_checkpoint_initialises_the_whole_network(imported):
    item = imported("agw")
    saved = load_checkpoint(item.path)["model"]
    cfg = load_config(CONFIGS / "agw/regdb.ini", ["MODEL.PRETRAIN_PATH", str(item.path)])
    other = build_model(cfg, 206)  # RegDB's classes, not the file's 395
    for key, value in other.state_dict().items():
        if key.startswith("classifier."):
            assert value.shape == (206, 2048)
        else:
            assert torch.equal(value, saved[key]), key
    same = build_model(cfg, 395)
    assert torch.equal(same.classifier.weight, saved["classifier.weight"])
    # Training-only modality heads absent from the checkpoint keep their init.
    heads = load_config(CONFIGS / "agw/regdb.ini", ["MODEL.PRETRAIN_PATH", str(item.path),
                                                    "LOSS.TERMS", "id, wrt, modality_id"])
    assert build_model(heads, 206).heads is not None
    # An imported network has no training state to resume.
    with pytest.raises(UserError) as exc:
        check_resume_compatible(load_checkpoint(item.path), cfg, 395, str(item.path))
    assert f"start a run with MODEL.PRETRAIN_PATH {item.path}" in one_line(exc)
    wrong = load_config(CONFIGS / "agw/regdb.ini", ["MODEL.PRETRAIN_PATH", str(item.path),
                                                    "MODEL.NON_LOCAL_BLOCKS", "0, 1, 3, 0"])
    with pytest.raises(UserError) as exc:
        build_model(wrong, 206)
    msg = one_line(exc)
    assert "does not fit the config's" in msg
    assert "unexpected keys: shared.layer2.non_local.1" in msg
