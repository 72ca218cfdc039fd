"""The paper configs build the published networks, batches, losses and test features."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import data
from data.build import make_train_loader
from data.transforms import PART_COPY, PART_PLAIN
from engine.inference import extract_features
from layers import build_criterion
from layers.metric import mining_masks
from modeling import build_model
from modeling.methods.agw import (
    NonLocalBlock,
    weighted_regularized_triplet_published,
)
from modeling.methods.caj import adaptive_triplet_adp
from modeling.methods.deen.losses import center_guided_pair_mining, orthogonality_loss
from modeling.methods.deen.modules import MFA, DiverseEmbeddingExpansion
from solver import build_optimizer, build_scheduler
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.distances import pairwise_distance
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
PAPERS = [f"{m}_{d}" for m in ("agw", "caj", "deen") for d in ("regdb", "sysumm", "llcm")]
NO_WEIGHTS = ["MODEL.PRETRAIN_PATH", "", "MODEL.DEVICE", "cpu"]


def config(name: str, *overrides: str):
    path = REPO / "configs" / f"{name.replace('_', '/', 1)}.ini"  # agw_regdb: agw/regdb.ini
    return load_config(path, [*NO_WEIGHTS, *overrides])


def modules(model, kind):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, kind)]


@pytest.mark.parametrize("name", [p for p in PAPERS if not p.startswith("deen")])
def test_agw_and_caj_build_the_published_non_local_blocks(name):
    model = build_model(config(name), 8)
    blocks = modules(model, NonLocalBlock)
    # After blocks 2, 3 of layer2 (512 channels) and 3, 4, 5 of layer3 (1024).
    assert [n for n, _ in blocks] == [f"shared.layer{i}.non_local.{j}"
                                      for i, j in ((2, 0), (2, 1), (3, 0), (3, 1), (3, 2))]
    assert {n: m._after for n, m in model.shared.named_children() if n in ("layer2", "layer3")
            } == {"layer2": {2: 0, 3: 1}, "layer3": {3: 0, 4: 1, 5: 2}}
    for (_, block), width in zip(blocks, (512, 512, 1024, 1024, 1024)):
        shapes = {k: tuple(v.shape) for k, v in block.state_dict().items()}
        assert shapes["theta.weight"] == shapes["phi.weight"] == shapes["g.weight"] == \
            (1, width, 1, 1)  # inter_channels = reduc_ratio // reduc_ratio = 1
        assert shapes["theta.bias"] == shapes["g.bias"] == (1,)
        assert shapes["out.0.weight"] == (width, 1, 1, 1) and shapes["out.1.weight"] == (width,)
    # The BNNeck weight is drawn around 1 (kaiming init of the published code).
    neck = model.neck.weight.detach()
    assert 0.001 < float(neck.std()) < 0.02 and abs(float(neck.mean()) - 1) < 0.005
    assert not model.neck.bias.requires_grad
    assert model.classifier.bias is None


@pytest.mark.parametrize("name", ["agw_regdb", "deen_sysumm"])
def test_inserted_modules_train_at_the_backbone_rate(name):
    cfg = config(name)
    model = build_model(cfg, 8)
    opt = build_optimizer(cfg, model, build_criterion(cfg, 8, model.feat_dim))
    rate = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    kinds = (NonLocalBlock, MFA, DiverseEmbeddingExpansion)
    inserted = [p for _, m in modules(model, kinds) for p in m.parameters()]
    assert inserted and {rate[id(p)] for p in inserted} == {0.01}
    assert rate[id(model.neck.weight)] == rate[id(model.classifier.weight)] == pytest.approx(0.1)
    assert rate[id(model.shared.layer4.blocks[0].conv1.weight
                   if name.startswith("agw") else model.shared.layer1.stage.blocks[0]
                   .conv1.weight)] == 0.01


def test_stepwise_warmup_is_lr_times_epoch_plus_one_over_ten():
    cfg = config("agw_regdb")
    model = build_model(config("agw_regdb", "MODEL.NAME", "resnet18",
                               "MODEL.NON_LOCAL_BLOCKS", "0, 1, 1, 0"), 8)
    opt = build_optimizer(cfg, model, build_criterion(cfg, 8, model.feat_dim))
    sched = build_scheduler(cfg, opt, iters_per_epoch=3)
    factor = sched.lr_lambdas[0]
    for e in range(12):
        expected = (e + 1) / 10 if e < 10 else 1.0
        assert [factor(3 * e + i) for i in range(3)] == pytest.approx([expected] * 3)
    assert factor(3 * 20) == pytest.approx(0.1) and factor(3 * 50) == pytest.approx(0.01)


def test_caj_batches_are_the_published_joint_batches(regdb_root):
    cfg = config("caj_regdb", "DATA.ROOT", str(regdb_root), "DATA.SIZE_TRAIN", "32,16",
                 "DATA.TRAIN_BATCH_SIZE", "8", "DATA.SAMPLE_ID_INSTANCE", "2",
                 "DATA.NUM_WORKERS", "0", "DATA.RE_PROB", "0")
    dataset = data.build_dataset(cfg, verbose=False)
    loader, sampler = make_train_loader(cfg, dataset, verbose=False)
    sampler.set_epoch(1)
    batch = next(iter(loader))
    img, part, mod = batch["img"], batch["part"], batch["modality"]
    assert img.shape[0] == 12  # 2 ids x (2 visible + 2 copies + 2 thermal)
    plain_vis = (mod == VISIBLE) & (part == PART_PLAIN)
    copies = part == PART_COPY
    assert torch.equal(batch["index"][copies], batch["index"][plain_vis])
    assert bool((mod[copies] == VISIBLE).all()) and int((mod == INFRARED).sum()) == 4
    # The copy is always one channel replicated (R, G or B, never gray); the plain
    # visible images keep their colours.
    same = (img[:, 0] == img[:, 1]) & (img[:, 1] == img[:, 2])
    assert bool(same[copies].all()) and not bool(same[plain_vis].all())
    # Cross-entropy and the triplet term see all 12 images.
    model = build_model(config("caj_regdb", "MODEL.NAME", "resnet18",
                               "MODEL.NON_LOCAL_BLOCKS", "0, 1, 1, 0"), dataset.num_classes)
    criterion = build_criterion(cfg, dataset.num_classes, model.feat_dim)
    out = model.train()(img, mod)
    total, terms = criterion(out, batch["pid"], mod)
    assert set(terms) == {"loss_id", "loss_adp"} and out["logits"].shape[0] == 12
    pos, neg = mining_masks(batch["pid"], mod, "all")
    expected = adaptive_triplet_adp(pairwise_distance(out["feat"]), pos, neg, 1.0, 1.0, True)
    assert terms["loss_adp"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)


def test_agw_trains_with_its_own_wrt_form():
    cfg = config("agw_regdb")
    crit = build_criterion(cfg, 4, 2)
    feat = torch.tensor([[0.0, 0.0], [1.0, 0.0], [20.0, 0.0], [21.0, 1.0]])
    pid, mod = torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 0, 1])
    out = {"feat": feat, "bn_feat": feat, "logits": torch.zeros(4, 4)}
    pos, neg = mining_masks(pid, mod, "all")
    expected = weighted_regularized_triplet_published(pairwise_distance(feat), pos, neg)
    assert crit(out, pid, mod)[1]["loss_wrt"].item() == pytest.approx(expected.item())


def deen_small(name: str = "deen_sysumm", *overrides: str):
    return config(name, "MODEL.NAME", "resnet18", "DATA.SIZE_TRAIN", "64,32",
                  "DATA.SIZE_TEST", "64,32", *overrides)


def test_deen_network_expands_and_aggregates():
    cfg = deen_small()
    model = build_model(cfg, 5)
    assert [n for n, _ in modules(model, MFA)] == ["shared.layer1.mfa", "shared.layer2.mfa",
                                                   "shared.layer3.stage.mfa"]
    assert [n for n, _ in modules(model, DiverseEmbeddingExpansion)] == ["shared.layer3.dee"]
    img, mod = torch.randn(6, 3, 64, 32), torch.tensor([0, 1, 0, 1, 0, 1])
    out = model.train()(img, mod)
    assert out["views"] == 3 and out["feat"].shape == (18, 512)
    assert out["logits"].shape == (18, 5)
    regdb = build_model(deen_small("deen_regdb"), 5)
    assert isinstance(regdb.shared.layer4, torch.nn.Identity) and regdb.feat_dim == 256
    assert [n for n, _ in modules(regdb, MFA)] == ["shared.layer1.mfa",
                                                   "shared.layer2.stage.mfa"]
    assert [n for n, _ in modules(regdb, DiverseEmbeddingExpansion)] == ["shared.layer2.dee"]


def test_deen_losses_see_every_embedding_with_its_label():
    torch.manual_seed(0)
    cfg = deen_small()
    model = build_model(cfg, 4)
    crit = build_criterion(cfg, 4, model.feat_dim)
    pid = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 0, 0, 1, 1, 2, 2, 3, 3])
    mod = torch.tensor([0] * 8 + [1] * 8)
    out = model.train()(torch.randn(16, 3, 64, 32), mod)
    total, terms = crit(out, pid, mod)
    assert set(terms) == {"loss_id", "loss_tri", "loss_cpm", "loss_orth"}
    views = out["feat"].chunk(3)
    cpm = sum(center_guided_pair_mining(views[0], v, pid, mod, 0.2, True) for v in views[1:])
    assert terms["loss_cpm"].item() == pytest.approx(0.8 * cpm.item(), rel=1e-5)
    orth = orthogonality_loss(views[1], views[2], 3)
    assert terms["loss_orth"].item() == pytest.approx(0.01 * orth.item(), rel=1e-5)
    id_loss = F.cross_entropy(out["logits"], pid.repeat(3))
    assert terms["loss_id"].item() == pytest.approx(id_loss.item(), rel=1e-5)
    # The orthogonality term trains the expansion's branches, not the original path.
    model.zero_grad()
    terms["loss_orth"].backward(retain_graph=True)
    dee = model.shared.layer3.dee
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in dee.parameters())
    assert model.classifier.weight.grad is None
    total.backward()
    assert model.visible.stem[0].weight.grad.abs().sum() > 0


def test_deen_test_feature_is_six_normalised_parts_with_their_mirrors():
    torch.manual_seed(0)
    cfg = deen_small()
    model = build_model(cfg, 4).eval()
    img, mod = torch.randn(3, 3, 64, 32), torch.tensor([0, 1, 0])
    with torch.no_grad():
        feat = model(img, mod)
        pooled = model.pool(model.shared(model._specific(img, mod)))
        bn = model.neck(pooled)
    assert pooled.shape == (9, 512) and feat.shape == (3, 6 * 512)
    parts = [F.normalize(f[v * 3:(v + 1) * 3], dim=1) for v in range(3) for f in (pooled, bn)]
    torch.testing.assert_close(feat, torch.cat(parts, dim=1))
    batches = [{"img": img, "modality": mod, "index": torch.arange(3)}]
    flipped = extract_features(model, batches, 3, torch.device("cpu"), flip=True)
    with torch.no_grad():
        mirror = model(img.flip(3), mod)
    torch.testing.assert_close(flipped, feat + mirror)
    # The original embedding only, or one kind, on request.
    model.test_feat = type(model.test_feat)("bn", "original", True)
    with torch.no_grad():
        torch.testing.assert_close(model(img, mod), F.normalize(bn[:3], dim=1))


def test_deen_keys_check_the_network():
    with pytest.raises(UserError, match="DEEN.AFTER = 1 must be a shared stage: 2..4"):
        config("deen_sysumm", "MODEL.SHARED_FROM", "2", "MODEL.DEE_AFTER", "1")
    with pytest.raises(UserError, match="DEEN.MFA = 0, 1, 0, 1 must be 4 flags .* none "
                                        "after layer3"):
        config("deen_regdb", "MODEL.MFA", "0, 1, 0, 1")
    with pytest.raises(UserError, match="LOSS.TERMS has cpm, which needs expanded embeddings: "
                                        "DEEN.BRANCHES >= 1"):
        build_criterion(config("agw_regdb", "LOSS.TERMS", "id, cpm"), 4, 8)
    with pytest.raises(UserError, match="LOSS.TERMS has orth, which needs .* >= 2"):
        build_criterion(config("deen_regdb", "MODEL.DEE_BRANCHES", "1"), 4, 8)


@pytest.mark.parametrize("dataset", ["regdb", "sysumm", "llcm"])
def test_deen_trains_and_tests_end_to_end(dataset, regdb_root, sysu_root, llcm_root, tmp_path):
    from engine.distributed import DistInfo
    from engine.launch import train_and_test

    root = {"regdb": regdb_root, "sysumm": sysu_root, "llcm": llcm_root}[dataset]
    cfg = deen_small(f"deen_{dataset}", "DATA.ROOT", str(root), "DATA.TRAIN_BATCH_SIZE", "8",
                     "DATA.SAMPLE_ID_INSTANCE", "2", "DATA.NUM_WORKERS", "0",
                     "DATA.VERIFY_IMAGES", "no", "DATA.RESIZE", "bilinear",
                     "TRAIN.MAX_EPOCHS", "2", "TRAIN.ITERS_PER_EPOCH", "1",
                     "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.STEPS", "", "TRAIN.EVAL_PERIOD", "0",
                     "TEST.NUM_TRIALS", "2", "TRAIN.OUTPUT_PATH", str(tmp_path / "run"))
    res = train_and_test(cfg, None, DistInfo(), torch.device("cpu"))
    assert res["protocol"]["feature"] == "pool+bn" and res["protocol"]["views"] == "all"
    assert res["protocol"]["norm_each"] is True and res["protocol"]["distance"] == "dot"
    head = res["headline"]
    assert head["setting"] == data.DATASETS[dataset].headline and 0 <= head["R1"] <= 100
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and "loss_cpm" in metrics[0] and "loss_orth" in metrics[0]


def test_part_weights_weigh_pooled_and_bn_inner_products():
    torch.manual_seed(0)
    model = build_model(deen_small("deen_sysumm", "TEST.PART_WEIGHTS", "0.1, 0.9"), 4).eval()
    assert model.test_feat.weights == (0.1, 0.9)
    img, mod = torch.randn(3, 3, 64, 32), torch.tensor([0, 1, 1])
    with torch.no_grad():
        weighted = model(img, mod)
        model.test_feat = type(model.test_feat)("pool+bn", "all", True)
        plain = model(img, mod)
    parts = plain.split(512, dim=1)  # pool, bn of each of the 3 embeddings
    expected = sum(w * p @ p.T for w, p in zip([0.1, 0.9] * 3, parts, strict=True))
    # DEEN's distmat8: 0.1 x the pooled parts' inner products + 0.9 x the BN parts'.
    torch.testing.assert_close(weighted @ weighted.T, expected)
    torch.testing.assert_close(plain @ plain.T, sum(p @ p.T for p in parts))


def test_part_weights_are_checked():
    with pytest.raises(UserError, match=r"TEST.PART_WEIGHTS = 0.1, 0.9 weighs the parts of "
                                        r"TEST.FEAT pool\+bn; TEST.FEAT is bn"):
        config("agw_regdb", "TEST.PART_WEIGHTS", "0.1, 0.9")
    for bad in ("1, 1, 1", "-0.5, 1", "0, 0"):
        with pytest.raises(UserError, match="TEST.PART_WEIGHTS = .* must be 2 non-negative "
                                            "numbers, not both 0"):
            config("deen_regdb", "TEST.PART_WEIGHTS", bad)
