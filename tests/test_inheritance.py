"""Recipes that inherit (``_BASE_``), keys that moved into sections, learning-rate groups
declared by the modules, and the bad input of each: one line, exit 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from modeling import build_model
from modeling.stages import INSERTIONS, Insertion
from utils.config import config_from_ini_text, config_to_ini, load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
SMALL = ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu"]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_chain_merges_root_first_relative_to_the_including_file(tmp_path):
    write(tmp_path / "base" / "root.ini", "[TRAIN]\nBASE_LR = 0.5\nMAX_EPOCHS = 7\n")
    write(tmp_path / "method" / "mid.ini", "# a comment\n_BASE_ = ../base/root.ini\n"
          "[TRAIN]\nMAX_EPOCHS = 9\n[AGW]\nNON_LOCAL_BLOCKS = 0, 1, 1, 0\n")
    leaf = write(tmp_path / "method" / "leaf.ini", "_BASE_ = mid.ini\n[TRAIN]\nSEED = 3\n")
    cfg = load_config(leaf, ["TRAIN.SEED", "4"])
    assert (cfg.TRAIN.BASE_LR, cfg.TRAIN.MAX_EPOCHS, cfg.TRAIN.SEED) == (0.5, 9, 4)
    assert cfg.AGW.NON_LOCAL_BLOCKS == (0, 1, 1, 0)
    flat = config_to_ini(cfg)  # the run folder's config.ini: whole, no base needed
    assert "_BASE_" not in flat
    assert config_from_ini_text(flat) == cfg


def test_every_recipe_file_loads_and_names_its_method_sections():
    recipes = sorted(p for p in (REPO / "configs").rglob("*.ini"))
    assert len(recipes) >= 16
    for path in recipes:
        load_config(path)
    assert load_config(REPO / "configs" / "caj" / "regdb.ini").AGW.NON_LOCAL_BLOCKS == \
        (0, 2, 3, 0)  # CAJ inherits AGW's network through caj.ini


@pytest.mark.parametrize("files, leaf, message", [
    ({"a.ini": "_BASE_ = b.ini\n[TRAIN]\nSEED = 1\n", "b.ini": "_BASE_ = a.ini\n"},
     "a.ini", r"_BASE_ makes a cycle: .*a\.ini -> .*b\.ini -> .*a\.ini"),
    ({"a.ini": "_BASE_ = missing.ini\n[TRAIN]\nSEED = 1\n"}, "a.ini",
     r"a\.ini: _BASE_ .*missing\.ini not found"),
    ({"b.ini": "[TRAIN]\nSEED = 1\n", "a.ini": "_BASE_ = b.ini\n[DEEN]\nBRANCHS = 2\n"},
     "a.ini", r"a\.ini \(bases: .*b\.ini\): unknown key DEEN\.BRANCHS; did you mean "
              r"DEEN\.BRANCHES\?"),
])
def test_bad_bases_and_keys_are_one_line(tmp_path, files, leaf, message):
    for name, text in files.items():
        write(tmp_path / name, text)
    with pytest.raises(UserError, match=message):
        load_config(tmp_path / leaf)


def test_bad_base_exits_2_with_one_line(tmp_path):
    write(tmp_path / "a.ini", "_BASE_ = b.ini\n")
    write(tmp_path / "b.ini", "_BASE_ = a.ini\n")
    out = subprocess.run([sys.executable, "train.py", "--config", str(tmp_path / "a.ini")],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "_BASE_ makes a cycle" in out.stderr


def test_moved_keys_read_under_their_new_names(caplog):
    text = (FIXTURES / "saved_config_deen_v1.ini").read_text()
    assert "DEE_BRANCHES = 2" in text and "[DEEN]" not in text
    cfg = config_from_ini_text(text)
    assert (cfg.DEEN.BRANCHES, cfg.DEEN.MFA, cfg.SYSUMM.GALLERY) == (2, (1, 1, 1, 0), "random")
    agw = config_from_ini_text((FIXTURES / "saved_config_agw_v1.ini").read_text())
    assert agw.AGW.NON_LOCAL_INNER == 1 and agw.CAJ.ADP_SQUARE is True
    # Format 1 meant the squared distance by euclidean.
    assert agw.TEST.DISTANCE == "sqeuclidean"
    fresh = load_config(None, ["MODEL.DEE_BRANCHES", "2", "TEST.DISTANCE", "euclidean"])
    assert (fresh.DEEN.BRANCHES, fresh.TEST.DISTANCE) == (2, "euclidean")
    assert "MODEL.DEE_BRANCHES is now DEEN.BRANCHES" in caplog.text


class Ungrouped(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def test_parameter_in_no_group_is_refused_at_build(monkeypatch):
    spec = Insertion(lambda cfg, stage, bb: Ungrouped(bb.channels[stage]) if stage == 3 else None,
                     attr="extra", lr_group=None)
    monkeypatch.setitem(INSERTIONS, "zz_ungrouped", spec)
    with pytest.raises(UserError, match=r"parameter shared\.layer3\.extra\.conv\.weight belongs "
                                        r"to no learning-rate group"):
        build_model(load_config(None, SMALL), 3)


def test_unknown_group_is_refused_when_the_optimizer_is_built(monkeypatch):
    from layers import build_criterion
    from solver import build_optimizer

    spec = Insertion(lambda cfg, stage, bb: Ungrouped(bb.channels[stage]) if stage == 3 else None,
                     attr="extra", lr_group="mine")
    monkeypatch.setitem(INSERTIONS, "zz_mine", spec)
    cfg = load_config(None, SMALL)
    model = build_model(cfg, 3)
    with pytest.raises(UserError, match="learning-rate group 'mine', which is not registered"):
        build_optimizer(cfg, model, build_criterion(cfg, 3, model.feat_dim))
