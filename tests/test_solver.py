"""Optimizer groups, learning-rate schedules, shipped configs, and a short training run."""
import io
from pathlib import Path

import pytest
import torch

from layers import build_criterion
from modeling import build_model
from solver import WarmupSchedule, build_optimizer, build_scheduler
from utils.config import load_config
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
# Every shipped config but the demo's (which is built by tests/test_demo.py).
# Every paper recipe: configs/<method>/<dataset>.ini (the method's base file is
# configs/<method>/<method>.ini), named "<method>/<dataset>".
CONFIGS = tuple(sorted(f"{p.parent.name}/{p.stem}" for p in (REPO / "configs").glob("*/*.ini")
                       if p.stem != p.parent.name))


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(*overrides: str):
    return load_config(None, ["MODEL.NAME", "resnet18", "MODEL.PRETRAIN_PATH", "", *overrides])


def build_all(cfg, num_classes: int = 4):
    model = build_model(cfg, num_classes)
    criterion = build_criterion(cfg, num_classes, model.feat_dim)
    return model, criterion, build_optimizer(cfg, model, criterion)


def test_parameter_groups_rates_and_decay():
    cfg = small_cfg("TRAIN.OPTIMIZER", "sgd", "TRAIN.BASE_LR", "0.01", "TRAIN.NEW_LR_FACTOR", "10",
                    "TRAIN.HEAD_LR_FACTOR", "5", "TRAIN.WEIGHT_DECAY", "0.001",
                    "TRAIN.WEIGHT_DECAY_BIAS", "0", "TRAIN.WARMUP_EPOCHS", "0",
                    "MODEL.SHARED_FROM", "1", "MODEL.POOLING", "gem",
                    "LOSS.TERMS", "id, center, modality_id, kl")
    model, _, opt = build_all(cfg)
    groups = {g["name"]: g for g in opt.param_groups}
    assert set(groups) == {"backbone", "backbone_bias", "new", "new_bias", "head", "head_bias"}
    for name, lr in (("backbone", 0.01), ("new", 0.1), ("head", 0.05)):
        assert groups[name]["lr"] == pytest.approx(lr)
        assert groups[f"{name}_bias"]["lr"] == pytest.approx(lr)
        assert groups[name]["weight_decay"] == pytest.approx(0.001)
        assert groups[f"{name}_bias"]["weight_decay"] == 0
        assert all(p.ndim > 1 for p in groups[name]["params"])
        assert all(p.ndim <= 1 for p in groups[f"{name}_bias"]["params"])
    in_opt = [id(p) for g in opt.param_groups for p in g["params"]]
    trainable = [id(p) for p in model.parameters() if p.requires_grad]
    assert sorted(in_opt) == sorted(trainable)  # each trainable parameter exactly once
    assert id(model.neck.bias) not in in_opt  # BNNeck's frozen shift
    assert any(p is model.pool.p for p in groups["new_bias"]["params"])
    assert opt.defaults["momentum"] == 0.9 and opt.defaults["nesterov"] is True


@pytest.mark.parametrize("kind,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)])
def test_adam_kinds(kind, cls):
    _, _, opt = build_all(small_cfg("TRAIN.OPTIMIZER", kind, "TRAIN.MOMENTUM", "0.8"))
    assert type(opt) is cls and opt.defaults["betas"] == (0.8, 0.999)


def lrs_at(scheduler, optimizer, iterations):
    """Learning rate of the first group when iteration i runs, for sorted i."""
    seen, it = {}, 0
    for target in iterations:
        while it < target:
            optimizer.step()
            scheduler.step()
            it += 1
        seen[target] = optimizer.param_groups[0]["lr"]
    return seen


def test_warmup_multistep_values():
    cfg = small_cfg("TRAIN.OPTIMIZER", "sgd", "TRAIN.BASE_LR", "0.1", "TRAIN.SCHEDULER",
                    "multistep", "TRAIN.WARMUP_EPOCHS", "2", "TRAIN.WARMUP_FACTOR", "0.1",
                    "TRAIN.STEPS", "3, 5", "TRAIN.GAMMA", "0.1", "TRAIN.MAX_EPOCHS", "6")
    _, _, opt = build_all(cfg)
    sched = build_scheduler(cfg, opt, iters_per_epoch=10)
    lrs = lrs_at(sched, opt, [0, 5, 10, 20, 29, 30, 49, 50, 59])
    expected = {0: 0.01, 5: 0.1 * (0.1 + 0.9 * 0.25), 10: 0.055, 20: 0.1, 29: 0.1, 30: 0.01,
                49: 0.01, 50: 0.001, 59: 0.001}
    for it, lr in expected.items():
        assert lrs[it] == pytest.approx(lr), it
    assert opt.param_groups[2]["lr"] == pytest.approx(0.001)  # every group is scaled alike


def test_warmup_cosine_values():
    cfg = small_cfg("TRAIN.OPTIMIZER", "adamw", "TRAIN.BASE_LR", "1", "TRAIN.SCHEDULER", "cosine",
                    "TRAIN.WARMUP_EPOCHS", "1", "TRAIN.WARMUP_FACTOR", "0.01",
                    "TRAIN.MIN_LR_FACTOR", "0.01", "TRAIN.MAX_EPOCHS", "5")
    _, _, opt = build_all(cfg)
    sched = build_scheduler(cfg, opt, iters_per_epoch=4)
    lrs = lrs_at(sched, opt, [0, 2, 4, 12, 20, 25])
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[2] == pytest.approx(0.505)  # half-way through the warmup
    assert lrs[4] == pytest.approx(1.0)  # warmup over: cosine starts at 1
    assert lrs[12] == pytest.approx(0.505)  # half-way through the cosine
    assert lrs[20] == pytest.approx(0.01)  # the end: MIN_LR_FACTOR
    assert lrs[25] == pytest.approx(0.01)


def test_constant_schedule():
    schedule = WarmupSchedule("multistep", 7, 100, 0, 0.01, (), 0.1, 0.0)
    assert {schedule(i) for i in (0, 1, 350, 699)} == {1.0}


def test_scheduler_state_resumes_exactly():
    cfg = small_cfg("TRAIN.WARMUP_EPOCHS", "1", "TRAIN.STEPS", "2", "TRAIN.MAX_EPOCHS", "4")
    _, _, opt = build_all(cfg)
    sched = build_scheduler(cfg, opt, iters_per_epoch=5)
    lrs_at(sched, opt, [7])
    buf = io.BytesIO()
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    expected = [g["lr"] for g in opt.param_groups]
    _, _, opt2 = build_all(cfg)
    sched2 = build_scheduler(cfg, opt2, iters_per_epoch=5)
    opt2.load_state_dict(state["optimizer"])
    sched2.load_state_dict(state["scheduler"])
    assert [g["lr"] for g in opt2.param_groups] == pytest.approx(expected)
    for _ in range(5):
        for o, s in ((opt, sched), (opt2, sched2)):
            o.step()
            s.step()
        assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert sched2.last_epoch == sched.last_epoch == 12


@pytest.mark.parametrize("overrides,pattern", [
    (["TRAIN.STEPS", "50, 20"], r"TRAIN\.STEPS = 50, 20 must be strictly increasing"),
    (["TRAIN.WARMUP_EPOCHS", "10", "TRAIN.MAX_EPOCHS", "10"], r"WARMUP_EPOCHS = 10 must be less"),
])
def test_schedule_errors(overrides, pattern):
    cfg = small_cfg(*overrides)
    _, _, opt = build_all(cfg)
    with pytest.raises(UserError, match=pattern):
        build_scheduler(cfg, opt, 10)


def test_nesterov_needs_momentum():
    with pytest.raises(UserError, match="NESTEROV"):
        build_all(small_cfg("TRAIN.OPTIMIZER", "sgd", "TRAIN.MOMENTUM", "0"))


def test_every_method_has_its_recipes():
    assert {n.split("/")[0] for n in CONFIGS} == {"agw", "caj", "deen", "mscmnet", "res50"}
    assert len(CONFIGS) == 14


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_build(name):
    method, dataset = name.split("/")
    cfg = load_config(REPO / "configs" / f"{name}.ini", ["MODEL.PRETRAIN_PATH", ""])
    suffix = "_all" if method == "res50" else ""
    assert cfg.TRAIN.OUTPUT_PATH == f"./output/{method}_{dataset}{suffix}"
    assert cfg.DATA.DATASET_NAME == dataset
    assert cfg.MODEL.NAME == "resnet50" and cfg.DATA.ROOT == ""
    with torch.device("meta"):  # shapes only: nothing allocated
        model = build_model(cfg, 206)
    criterion = build_criterion(cfg, 206, model.feat_dim)
    build_scheduler(cfg, build_optimizer(cfg, model, criterion), iters_per_epoch=100)
    source = method == "res50"
    assert cfg.MODEL.SHARED_FROM == (0 if source else 1)
    assert (model.heads is not None) == source
    assert (getattr(model, "front", None) is not None) == (method == "mscmnet")
    if source:
        assert cfg.TRAIN.OPTIMIZER == "adam" and cfg.TRAIN.STEPS == ()
        assert cfg.LOSS.MARGIN == (0.2 if dataset == "regdb" else 0.3)
    elif method == "deen":
        assert cfg.DEEN.BRANCHES == 2 and cfg.TRAIN.STEPS == (20, 80)
        assert cfg.MODEL.LAST_STAGE == (3 if dataset == "regdb" else 4)
    elif method == "mscmnet":
        assert cfg.AGW.NON_LOCAL_BLOCKS == (0, 2, 3, 0)
        assert cfg.TRAIN.STEPS == (25, 90, 120) and cfg.TRAIN.MAX_EPOCHS == 150
        assert cfg.DATA.VISIBLE_COPY and cfg.DATA.INFRARED_COPY
    else:
        assert cfg.AGW.NON_LOCAL_BLOCKS == (0, 2, 3, 0) and cfg.TRAIN.STEPS == (20, 50)
        assert cfg.DATA.VISIBLE_COPY == (method == "caj")
    assert (cfg.TRAIN.SELECT, cfg.TRAIN.SEED) == ("last", 0 if not source else 2019)
    assert load_config(REPO / "configs" / f"{name}.ini").MODEL.PRETRAIN_PATH == "imagenet"


def synthetic_batch(ids: int = 4, per_modality: int = 1, size=(32, 16)):
    """Images whose identity is a smooth colour pattern; infrared sees it as gray."""
    gen = torch.Generator().manual_seed(0)
    imgs, pids, mods = [], [], []
    for pid in range(ids):
        pattern = torch.nn.functional.interpolate(
            torch.randn(1, 3, 4, 2, generator=gen), size=size, mode="bilinear")[0]
        for modality in (0, 1):
            for _ in range(per_modality):
                img = pattern if modality == 0 else pattern.mean(0, keepdim=True).expand(3, -1, -1)
                imgs.append(img + 0.3 * torch.randn(3, *size, generator=gen))
                pids.append(pid)
                mods.append(modality)
    return torch.stack(imgs), torch.tensor(pids), torch.tensor(mods)


def test_short_training_run_drives_the_loss_down():
    torch.manual_seed(0)
    # The source design's settings, on a two-stream resnet18 with AGW's extras; the
    # model has more classes than the batch shows, as in real training.
    num_classes = 32
    cfg = small_cfg("MODEL.SHARED_FROM", "1", "MODEL.NON_LOCAL_BLOCKS", "0, 1, 0, 0",
                    "MODEL.POOLING", "gem", "LOSS.TERMS", "id, triplet, wrt, modality_id, kl",
                    "LOSS.METRIC_FEAT", "bn", "LOSS.KL_WEIGHT", str(1 / num_classes),
                    "TRAIN.OPTIMIZER", "adam", "TRAIN.BASE_LR", "0.0001",
                    "TRAIN.WARMUP_EPOCHS", "0", "TRAIN.STEPS", "")
    model, criterion, opt = build_all(cfg, num_classes)
    sched = build_scheduler(cfg, opt, iters_per_epoch=10)
    img, pid, modality = synthetic_batch()
    model.train()
    totals = []
    for _ in range(30):
        total, _ = criterion(model(img, modality), pid, modality)
        opt.zero_grad()
        total.backward()
        opt.step()
        sched.step()
        totals.append(total.item())
    assert all(torch.isfinite(torch.tensor(totals)))
    assert sum(totals[-5:]) / 5 < 0.5 * sum(totals[:5]) / 5
    assert totals[-1] < 0.5 * totals[0]
