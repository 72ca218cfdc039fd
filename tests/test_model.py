"""Model: shapes, modality routing, parameter sharing, pretrained weights, groups."""
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn

from layers import GeneralizedMeanPooling
from modeling import STAGES, EvalFeature, build_model
from modeling.methods.agw import NonLocalBlock
from utils.config import load_config
from utils.errors import UserError

SMALL = (2, 3, 64, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def small_cfg(*overrides: str, name: str = "resnet18"):
    return load_config(None, ["MODEL.NAME", name, "MODEL.PRETRAIN_PATH", "", *overrides])


def numel(params) -> int:
    return sum(p.numel() for p in params)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("shared_from", [0, 1, 2, 3, 4])
def test_output_shapes_for_every_shared_from(shared_from):
    cfg = small_cfg("MODEL.SHARED_FROM", str(shared_from), "LOSS.TERMS", "id, modality_id, kl")
    model = build_model(cfg, num_classes=5)
    img = torch.randn(4, 3, 64, 32)
    modality = torch.tensor([1, 0, 0, 1])
    out = model(img, modality)
    maps = set(STAGES[max(shared_from - 1, 0):])  # every stage's map: the front's last, then all
    assert set(out) == {"feat", "bn_feat", "logits", "head_logits", "views"} | maps
    assert out["views"] == 1 and out["layer4"].shape == (4, 512, 4, 2)  # 64x32, last stride 1
    assert out["feat"].shape == out["bn_feat"].shape == (4, 512)
    assert out["logits"].shape == (4, 5)
    assert out["head_logits"].shape == (2, 4, 5)
    assert model.feat_dim == 512 and model.num_classes == 5
    model.eval()
    with torch.no_grad():
        model.test_feat = EvalFeature("pool")
        pooled = model(img, modality)
        model.test_feat = EvalFeature("bn")
        bn = model(img, modality)
        assert bn.shape == pooled.shape == (4, 512)
        assert torch.allclose(model.neck(pooled), bn)
        for modality_only in (torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)):
            assert model(img, modality_only).shape == (4, 512)


def test_heads_only_with_their_losses():
    out = build_model(small_cfg("LOSS.TERMS", "id, triplet"), 5)(
        torch.randn(*SMALL), torch.tensor([0, 1]))
    assert "head_logits" not in out


@pytest.mark.parametrize("name,dim", [("resnet34", 512), ("resnet50", 2048), ("resnet101", 2048)])
def test_every_backbone(name, dim):
    cfg = small_cfg("MODEL.SHARED_FROM", "2", "MODEL.NON_LOCAL_BLOCKS", "0, 1, 1, 0", name=name)
    model = build_model(cfg, 3).eval()
    with torch.no_grad():
        feat = model(torch.randn(3, 3, 32, 16), torch.tensor([0, 1, 0]))
    assert model.feat_dim == dim and feat.shape == (3, dim)


@pytest.mark.parametrize("last_stride,size", [(1, (4, 2)), (2, (2, 1))])
def test_last_stride(last_stride, size):
    model = build_model(small_cfg("MODEL.LAST_STRIDE", str(last_stride)), 3).eval()
    x = model.shared[:4](torch.randn(1, 3, 64, 32))
    assert tuple(model.shared.layer4(x).shape[2:]) == size


def test_each_modality_trains_only_its_own_stream():
    model = build_model(small_cfg("MODEL.SHARED_FROM", "2"), 4)
    pid = torch.tensor([0, 1, 2])
    for modality, own, other in ((0, model.visible, model.infrared),
                                 (1, model.infrared, model.visible)):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(3, 3, 64, 32), torch.full((3,), modality))
        nn.functional.cross_entropy(out["logits"], pid).backward()
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in own.parameters())
        assert all(p.grad is None for p in other.parameters())
        assert all(p.grad is not None for p in model.shared.parameters())


def test_mixed_batch_routes_by_modality_tensor_and_keeps_order():
    model = build_model(small_cfg("MODEL.SHARED_FROM", "1"), 4).eval()
    with torch.no_grad():  # make the two stems differ
        model.infrared.stem[0].weight.mul_(-1.5)
        img = torch.randn(5, 3, 64, 32)
        modality = torch.tensor([1, 0, 0, 1, 0])
        batch = model(img, modality)
        single = torch.cat([model(img[i:i + 1], modality[i:i + 1]) for i in range(5)])
        assert torch.allclose(batch, single, atol=1e-5)
        swapped = model(img, 1 - modality)
        assert not torch.allclose(batch, swapped, atol=1e-3)
        cl = model(img.contiguous(memory_format=torch.channels_last), modality)
        assert torch.allclose(batch, cl, atol=1e-4)
    with pytest.raises(ValueError, match="modality"):
        model(img, torch.tensor([0, 1, 2, 0, 1]))


def test_two_stream_adds_exactly_the_specific_modules():
    shared = build_model(small_cfg("MODEL.SHARED_FROM", "0"), 7)
    total = numel(shared.parameters())
    for k in range(1, 5):
        model = build_model(small_cfg("MODEL.SHARED_FROM", str(k)), 7)
        specific = numel(model.visible.parameters())
        assert specific == numel(model.infrared.parameters())
        assert specific == sum(numel(getattr(shared.shared, s).parameters()) for s in STAGES[:k])
        assert numel(model.parameters()) == total + specific
        assert list(model.visible._modules) == list(STAGES[:k])


def test_non_local_blocks_start_as_identity_and_are_placed():
    block = NonLocalBlock(16, reduction=4)
    assert block.inner == 4
    x = torch.randn(2, 16, 6, 3)
    assert torch.equal(block(x), x)
    model = build_model(small_cfg("MODEL.NON_LOCAL_BLOCKS", "0, 2, 1, 0",
                                  "MODEL.NON_LOCAL_REDUCTION", "4"), 3)
    assert len(model.shared.layer2.non_local) == 2 and len(model.shared.layer3.non_local) == 1
    assert model.shared.layer2.non_local[0].inner == 128 // 4
    with pytest.raises(UserError, match=r"NON_LOCAL_BLOCKS.*layer1, which has 2"):
        build_model(small_cfg("MODEL.NON_LOCAL_BLOCKS", "3, 0, 0, 0"), 3)


def test_non_local_order_of_products_does_not_change_the_result():
    block = NonLocalBlock(8, reduction=2)
    nn.init.ones_(block.out[1].weight)
    small, large = torch.randn(1, 8, 1, 2), torch.randn(1, 8, 4, 4)  # N < C' and N > C'
    for x in (small, large):
        b, _, h, w = x.shape
        theta = block.theta(x).flatten(2).transpose(1, 2)
        ref = theta @ block.phi(x).flatten(2) / (h * w) @ block.g(x).flatten(2).transpose(1, 2)
        ref = x + block.out(ref.transpose(1, 2).reshape(b, -1, h, w))
        assert torch.allclose(block(x), ref, atol=1e-5)


def test_gem_pooling():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(GeneralizedMeanPooling(1.0, learnable=False)(x), x.mean((2, 3)),
                          atol=1e-6)
    cubic = x.pow(3).mean((2, 3)).pow(1 / 3)
    assert torch.allclose(GeneralizedMeanPooling(3.0)(x), cubic, atol=1e-6)
    assert (cubic > x.mean((2, 3))).all() and (cubic < x.amax((2, 3))).all()
    learnable = build_model(small_cfg("MODEL.POOLING", "gem", "MODEL.GEM_P", "4"), 3)
    assert isinstance(learnable.pool.p, nn.Parameter) and learnable.pool.p.item() == 4.0
    fixed = build_model(small_cfg("MODEL.POOLING", "gem", "MODEL.GEM_LEARNABLE", "no"), 3)
    assert "pool.p" in dict(fixed.named_buffers())
    zeros = torch.zeros(2, 3, 2, 2, requires_grad=True)  # ReLU output can be all zero
    GeneralizedMeanPooling(3.0)(zeros).sum().backward()
    assert torch.isfinite(zeros.grad).all()


def test_bnneck_and_classifier():
    model = build_model(small_cfg(), 6)
    assert not model.neck.bias.requires_grad
    assert model.classifier.bias is None
    assert model.classifier.weight.std() < 0.01
    assert build_model(small_cfg("MODEL.FC_BIAS", "yes"), 6).classifier.bias is not None


def test_parameter_groups_partition_the_trainable_parameters():
    cfg = small_cfg("MODEL.SHARED_FROM", "1", "MODEL.NON_LOCAL_BLOCKS", "0, 1, 0, 0",
                    "MODEL.POOLING", "gem", "LOSS.TERMS", "id, kl")
    model = build_model(cfg, 5)
    groups = model.named_parameter_groups()
    ids = [id(p) for named in groups.values() for _, p in named]
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(ids) == len(set(ids)) == len(trainable)
    new = {n for n, _ in groups["new"]}
    assert {"pool.p", "neck.weight", "classifier.weight"} <= new
    assert groups["inserted"] and all(".non_local." in n for n, _ in groups["inserted"])
    assert all(n.startswith("heads.") for n, _ in groups["head"]) and groups["head"]
    assert all(n.startswith(("visible.", "infrared.", "shared.")) and "non_local" not in n
               for n, _ in groups["backbone"])


@pytest.fixture(scope="module")
def resnet18_state(tmp_path_factory):
    torch.manual_seed(1)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(state, path)
    return path, state


@pytest.mark.parametrize("wrap", [None, "state_dict", "model"])
def test_pretrained_state_dict_reaches_every_stream(resnet18_state, tmp_path, wrap):
    path, state = resnet18_state
    if wrap:
        path = tmp_path / "wrapped.pth"
        torch.save({wrap: state, "epoch": 3}, path)
    model = build_model(small_cfg("MODEL.PRETRAIN_PATH", str(path), "MODEL.SHARED_FROM", "2"), 4)
    for stream in (model.visible, model.infrared):
        assert torch.equal(stream.stem[0].weight, state["conv1.weight"])
        assert torch.equal(stream.stem[1].running_var, state["bn1.running_var"])
        assert torch.equal(stream.layer1.blocks[1].conv2.weight, state["layer1.1.conv2.weight"])
    assert torch.equal(model.shared.layer4.blocks[0].conv1.weight, state["layer4.0.conv1.weight"])
    assert model.visible.stem[0].weight is not model.infrared.stem[0].weight


def test_pretrained_file_errors(resnet18_state, tmp_path):
    path, state = resnet18_state
    missing = tmp_path / "nope.pth"
    with pytest.raises(UserError, match=f"{missing}: MODEL.PRETRAIN_PATH file not found"):
        build_model(small_cfg("MODEL.PRETRAIN_PATH", str(missing)), 3)

    broken = dict(state)
    del broken["layer1.0.conv1.weight"]
    broken["extra.weight"] = torch.zeros(1)
    broken["layer2.0.bn1.bias"] = torch.zeros(3)
    bad = tmp_path / "bad.pth"
    torch.save(broken, bad)
    with pytest.raises(UserError) as err:
        build_model(small_cfg("MODEL.PRETRAIN_PATH", str(bad)), 3)
    msg = str(err.value)
    assert str(bad) in msg and "resnet18" in msg
    assert "missing keys: layer1.0.conv1.weight" in msg
    assert "unexpected keys: extra.weight" in msg
    assert "layer2.0.bn1.bias (3,)" in msg
    assert "\n" not in msg

    with pytest.raises(UserError, match="missing keys"):  # a resnet18 file for a resnet34
        build_model(small_cfg("MODEL.PRETRAIN_PATH", str(path), name="resnet34"), 3)

    pickled = tmp_path / "whole_model.pth"
    torch.save(nn.Linear(2, 2), pickled)  # a whole pickled module is refused
    with pytest.raises(UserError, match="holds pickled Python objects"):
        build_model(small_cfg("MODEL.PRETRAIN_PATH", str(pickled)), 3)


def test_imagenet_weights_offline_is_a_user_error(monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(UserError, match=r"imagenet.*download https://.*resnet18.*PRETRAIN_PATH"):
        build_model(small_cfg("MODEL.PRETRAIN_PATH", "imagenet"), 3)


def test_a_damaged_checkpoint_as_pretrain_path_is_one_line(tmp_path):
    from tests.helpers import SMALL
    from utils.config import config_to_ini
    from utils.io import atomic_torch_save

    cfg = load_config(None, SMALL)
    state = build_model(cfg, 4).state_dict()
    path = tmp_path / "ckpt.pth"
    for model, num_classes, message in (
            ({**state, "note": 3}, 4, r"not tensors: note; unexpected keys: note"),
            (state, "four", r"num_classes is 'four', not a number of classes")):
        atomic_torch_save({"model": model, "config": config_to_ini(cfg),
                           "num_classes": num_classes}, path)
        with pytest.raises(UserError, match=rf"MODEL.PRETRAIN_PATH = {path}: .*{message}"):
            build_model(load_config(None, [*SMALL, "MODEL.PRETRAIN_PATH", str(path)]), 4)
