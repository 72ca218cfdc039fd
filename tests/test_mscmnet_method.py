"""MSCMNet as a method: its section, the four-stem front, the chain after layer3, QCT."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data.transforms import PART_COPY, PART_PLAIN
from layers.criterion import build_criterion
from modeling import build_model
from modeling.methods.mscmnet.parts import (
    FourStemFront,
    MultiScaleAttentionChain,
    quad_center_triplet,
)
from solver.optimizer import build_optimizer
from solver.scheduler import WarmupSchedule
from tests.helpers import SMALL
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
# 64x32 through resnet18: stem 16x8, layer1 16x8, layer2 8x4, layer3 4x2 (8 token dims).
NET = [*SMALL, "DATA.SIZE_TRAIN", "64,32", "DATA.SIZE_TEST", "64,32", "MODEL.SHARED_FROM", "1",
       "MODEL.POOLING", "gem", "MODEL.GEM_LEARNABLE", "no", "AGW.NON_LOCAL_BLOCKS", "0,2,1,0",
       "MSCMNET.FOUR_STEMS", "yes", "MSCMNET.ATTENTION", "yes", "MSCMNET.HEADS", "4",
       "LOSS.TERMS", "id, qct"]


def mscm_cfg(*extra: str):
    return load_config(None, [*NET, *extra])


def two_view_batch(ids: int = 2, k: int = 2):
    """Labels of a V1, V2, I1, I2 batch: ``ids`` identities x ``k`` images per block."""
    pid = torch.arange(ids).repeat_interleave(k)
    block = len(pid)
    return (torch.cat([pid] * 4),
            torch.tensor([VISIBLE] * 2 * block + [INFRARED] * 2 * block),
            torch.tensor(([PART_PLAIN] * block + [PART_COPY] * block) * 2))


def test_section_checks_give_one_line():
    with pytest.raises(UserError, match=r"DATA.SIZE_TEST = 32, 16 differs from "
                                        r"DATA.SIZE_TRAIN = 64, 32"):
        mscm_cfg("DATA.SIZE_TEST", "32,16")
    with pytest.raises(UserError, match="MSCMNET.FOUR_STEMS .* MODEL.SHARED_FROM = 1"):
        mscm_cfg("MODEL.SHARED_FROM", "0")
    with pytest.raises(UserError, match="MODEL.SHARED_FROM 0 or 1"):
        mscm_cfg("MODEL.SHARED_FROM", "2", "MSCMNET.FOUR_STEMS", "no")
    assert mscm_cfg("DATA.SIZE_TEST", "32,16", "MSCMNET.ATTENTION", "no").MSCMNET.HEADS == 4


@pytest.mark.parametrize("extra, message", [
    (("MSCMNET.HEADS", "3"), r"DATA.SIZE_TRAIN 64,32 gives a 4x2 layer3 map: its 8 token "
                             r"dims are not divisible by MSCMNET.HEADS 3"),
    (("DATA.SIZE_TRAIN", "56,32", "DATA.SIZE_TEST", "56,32"), r"choose an input size "
                                                               r"divisible by 16"),
])
def test_a_size_the_chain_cannot_take_is_one_line(extra, message):
    with pytest.raises(UserError, match=message):
        build_model(mscm_cfg(*extra), 3)


def test_network_shapes_groups_and_keys():
    model = build_model(mscm_cfg(), 3)
    assert isinstance(model.front, FourStemFront) and model.visible is None
    chain = model.shared.layer3.attention
    assert isinstance(chain, MultiScaleAttentionChain)
    assert chain.sizes == [(16, 8), (16, 8), (8, 4), (4, 2)]
    keys = set(model.state_dict())
    for stem in ("visible", "visible_aux", "infrared", "infrared_aux"):
        assert f"front.{stem}.0.weight" in keys
    assert "shared.layer3.attention.blocks.0.earlier_narrow.weight" in keys
    groups = {g: {n for n, _ in ps} for g, ps in model.named_parameter_groups().items()}
    assert "front.infrared_aux.1.weight" in groups["backbone"]
    assert "shared.layer3.attention.blocks.3.mlp.0.weight" in groups["inserted"]
    pid, modality, part = two_view_batch()
    model.train()
    out = model(torch.randn(len(pid), 3, 64, 32), modality, part)
    assert out["feat"].shape == (16, 512) and out["logits"].shape == (16, 3)
    assert out["stem"].shape == (16, 64, 16, 8) and out["layer3"].shape == (16, 256, 4, 2)
    loss, terms = build_criterion(mscm_cfg(), 3, 512)(out, {"pid": pid, "modality": modality,
                                                            "part": part})
    assert set(terms) == {"loss_id", "loss_qct"}
    assert torch.allclose(terms["loss_qct"],
                          quad_center_triplet(out["feat"], pid, modality, 0.7))
    loss.backward()
    # Every stem learns from its own stream.
    assert all(model.front.get_submodule(f"{s}.0").weight.grad.abs().sum() > 0
               for s in ("visible", "visible_aux", "infrared", "infrared_aux"))


def test_front_routes_by_part_and_averages_at_test():
    model = build_model(mscm_cfg(), 3)
    with torch.no_grad():  # make the four stems differ
        for i, name in enumerate(("visible", "visible_aux", "infrared", "infrared_aux")):
            model.front.get_submodule(f"{name}.0").weight.mul_(1 + i)
    pid, modality, part = two_view_batch()
    img = torch.randn(len(pid), 3, 64, 32)
    model.train()
    stem = model(img, modality, part)["stem"]
    front = model.front
    routes = {(VISIBLE, PART_PLAIN): "visible", (VISIBLE, PART_COPY): "visible_aux",
              (INFRARED, PART_PLAIN): "infrared", (INFRARED, PART_COPY): "infrared_aux"}
    for (m, p), name in routes.items():  # in training BatchNorm sees each stream's batch
        rows = (modality == m) & (part == p)
        assert torch.allclose(stem[rows], front.get_submodule(name)(img[rows]), atol=1e-5)
    with pytest.raises(ValueError, match="training needs the part"):
        model(img, modality)
    model.eval()
    with torch.no_grad():
        a = model.front(img[:1], modality[:1])
        expected = (front.visible(img[:1]) + front.visible_aux(img[:1])) / 2
        assert torch.allclose(a, expected, atol=1e-6)
        assert model(img, modality).shape == (16, 512)


def test_existing_networks_keep_their_keys():
    plain = build_model(load_config(None, [*SMALL, "MODEL.SHARED_FROM", "1"]), 3)
    assert not hasattr(plain, "front")
    assert all(not k.startswith(("front.", "shared.layer3.attention"))
               for k in plain.state_dict())
    assert any(k.startswith("visible.stem.") for k in plain.state_dict())


@pytest.mark.parametrize("dataset", ["sysumm", "regdb", "llcm"])
def test_recipes_schedule_groups_and_targets(dataset):
    cfg = load_config(REPO / "configs" / "mscmnet" / f"{dataset}.ini")
    t = cfg.TRAIN
    schedule = WarmupSchedule(t.SCHEDULER, 1, t.MAX_EPOCHS, t.WARMUP_EPOCHS, t.WARMUP_FACTOR,
                              tuple(t.STEPS), t.GAMMA, 0.0, t.WARMUP_STEPWISE)
    # The published per-epoch factor: 0.1 + 0.09 e for e < 10, then x0.1 at 25, 90, 120.
    published = [0.1 + 0.09 * e if e < 10 else 0.1 ** sum(e >= m for m in (25, 90, 120))
                 for e in range(150)]
    assert t.MAX_EPOCHS == 150
    assert [schedule(e) for e in range(150)] == pytest.approx(published, rel=1e-9)
    small = load_config(REPO / "configs" / "mscmnet" / f"{dataset}.ini",
                        [*SMALL, "DATA.SIZE_TRAIN", "64,32", "DATA.SIZE_TEST", "64,32",
                         "MSCMNET.HEADS", "4", "AGW.NON_LOCAL_BLOCKS", "0,2,2,0"])
    model = build_model(small, 3)
    lrs = {g["name"]: g["lr"] for g in build_optimizer(small, model, torch.nn.Identity())
           .param_groups}
    assert lrs["new"] == pytest.approx(0.1) and lrs["inserted"] == pytest.approx(0.01)
    assert lrs["backbone"] == pytest.approx(0.01)
    # 6 ids x 4 images x 2 modalities, each in two views: 96 images a step.
    assert 2 * cfg.DATA.TRAIN_BATCH_SIZE == 96 and cfg.DATA.SAMPLE_ID_INSTANCE == 4
    assert (cfg.TARGET.R1, cfg.TARGET.MAP, cfg.TARGET.MINP) == (
        (78.53, 74.20, 61.29) if dataset == "sysumm" else (-1, -1, -1))
    assert bool(cfg.TARGET.SOURCE) == (dataset == "sysumm")


def test_bench_reduction_builds_mscmnet(tmp_path):
    from tools.bench_recipes import reduced

    cfg = reduced("mscmnet/regdb", tmp_path, tmp_path / "out", 0, 30)
    assert (cfg.MSCMNET.HEADS, cfg.DATA.SIZE_TRAIN, cfg.MODEL.NAME) == (1, (64, 32), "resnet18")
    assert cfg.DATA.VISIBLE_COPY and cfg.DATA.INFRARED_COPY
    model = build_model(cfg, 3)
    assert model.shared.layer3.attention.sizes == [(16, 8), (16, 8), (8, 4), (4, 2)]
