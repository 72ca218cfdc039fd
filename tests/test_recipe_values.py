"""Every recipe builds what it built before its keys moved into method sections and its
file into an inherited one: the same merged configuration values, and on synthetic data
with a fixed seed the same first three training losses and the same test features as
recorded in ``tests/fixtures/recipe_values_before.json`` (``tests/recipe_values.py``)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from tests.recipe_values import RECIPES, make_roots, recipe_values
from utils.config import config_from_ini_text, load_config

REPO = Path(__file__).resolve().parents[1]
RECORDED = json.loads((REPO / "tests" / "fixtures" / "recipe_values_before.json").read_text())
# The recipe files of the recorded recipes (formerly configs/<name>.ini).
NEW_PATHS = {
    "res50_regdb_all": "configs/res50/regdb.ini", "res50_sysumm_all": "configs/res50/sysumm.ini",
    **{f"{m}_{d}": f"configs/{m}/{d}.ini" for m in ("agw", "caj", "deen")
       for d in ("regdb", "sysumm", "llcm")},
    "demo_synthetic": "configs/demo_synthetic.ini",
}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_merged_configuration_unchanged(name, caplog):
    with caplog.at_level(logging.WARNING):
        before = config_from_ini_text(RECORDED["recipes"][name]["config"], "recorded")
    now = load_config(REPO / NEW_PATHS[name])
    assert set(now) == set(before)
    # TARGET (the published figures, in the recipes since) is new; every other key keeps
    # its value, moved keys compared under their new names.
    differ = [f"{s}.{k}: {before[s][k]!r} -> {now[s][k]!r}" for s in now for k in now[s]
              if now[s][k] != before[s][k] and s != "TARGET"]
    assert differ == []


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return make_roots(tmp_path_factory.mktemp("recipes"))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_losses_and_features_unchanged(name, roots, tmp_path):
    recorded = RECORDED["recipes"][name]
    now = recipe_values(REPO / NEW_PATHS[name], roots[RECIPES[name]], tmp_path)
    for step, (a, b) in enumerate(zip(now["losses"], recorded["losses"]), start=1):
        assert set(a) == set(b), f"step {step}: loss terms {sorted(a)} vs {sorted(b)}"
        for term in a:
            assert a[term] == pytest.approx(b[term], rel=1e-4, abs=1e-5), (step, term)
    for key, summary in recorded["features"].items():
        got = now["features"][key]
        assert got["shape"] == summary["shape"]
        # Flip now adds an image's feature to its mirror's (the published form); the
        # recorded features averaged them: twice the recorded values.
        scale = 2.0 if recorded["flip"] else 1.0
        torch.testing.assert_close(torch.tensor(got["norms"]),
                                   scale * torch.tensor(summary["norms"]),
                                   rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor(got["projection"]),
                                   scale * torch.tensor(summary["projection"]),
                                   rtol=1e-4, atol=1e-4)
