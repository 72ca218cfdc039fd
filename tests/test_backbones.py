"""Every registered backbone keeps the five-stage contract; ResNeXt and ConvNeXt work
through the whole model: sharing, strides, non-local blocks, training, pretrained weights."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from layers.criterion import build_criterion
from modeling import BACKBONES, STAGES, Backbone, build_model
from modeling.methods.agw import NonLocalBlock
from solver.optimizer import build_optimizer
from utils.config import load_config
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# The two backbones beyond the ResNets (test_model.py covers those in depth).
OTHERS = ("resnext50_32x4d", "convnext_tiny")
FEAT_DIM = {"resnext50_32x4d": 2048, "convnext_tiny": 768}
IMAGE = (32, 32)


def cfg_for(name: str, *overrides: str):
    return load_config(None, ["MODEL.NAME", name, "MODEL.PRETRAIN_PATH", "", *overrides])


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_stage_contract(name):
    backbone = BACKBONES[name](cfg_for(name, "MODEL.LAST_STRIDE", "2"))
    assert isinstance(backbone, Backbone)
    assert len(backbone.layers) == 4 and len(backbone.channels) == len(STAGES) == 5
    assert all(isinstance(layer, nn.Sequential) for layer in backbone.layers)
    x = torch.randn(1, 3, *IMAGE)
    shapes = []
    with torch.no_grad():
        for stage in (backbone.stem, *backbone.layers):
            x = stage.eval()(x)
            shapes.append(tuple(x.shape[1:]))
    # Strides 4, 4, 8, 16, 32 on a 32 x 32 image, as each stage declares.
    assert shapes == [(c, s, s) for c, s in zip(backbone.channels, (8, 8, 4, 2, 1))]
    assert backbone.strides == (4, 1, 2, 2, 2)


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("last_stride,side", [(1, 2), (2, 1)])
def test_last_stride(name, last_stride, side):
    backbone = BACKBONES[name](cfg_for(name, "MODEL.LAST_STRIDE", str(last_stride)))
    with torch.no_grad():
        x = torch.randn(1, 3, *IMAGE)
        for stage in (backbone.stem, *backbone.layers):
            x = stage.eval()(x)
    assert tuple(x.shape) == (1, backbone.channels[-1], side, side)


@pytest.mark.parametrize("name", OTHERS)
@pytest.mark.parametrize("shared_from", [0, 1, 2, 3, 4])
def test_shared_from_routes_gradients_to_the_own_stream_only(name, shared_from):
    model = build_model(cfg_for(name, "MODEL.SHARED_FROM", str(shared_from)), 3)
    assert model.feat_dim == FEAT_DIM[name]
    streams = {0: model.visible, 1: model.infrared}
    if shared_from == 0:
        assert model.visible is None and model.infrared is None
        assert list(model.shared._modules) == list(STAGES)
    else:
        assert list(model.visible._modules) == list(STAGES[:shared_from])
        assert list(model.shared._modules) == list(STAGES[shared_from:])
    for modality in (0, 1) if shared_from else (0,):
        model.zero_grad(set_to_none=True)
        out = model(torch.randn(2, 3, *IMAGE), torch.full((2,), modality))
        assert out["logits"].shape == (2, 3) and out["feat"].shape == (2, model.feat_dim)
        nn.functional.cross_entropy(out["logits"], torch.tensor([0, 1])).backward()
        assert all(p.grad is not None for p in model.shared.parameters())
        if shared_from:
            own, other = streams[modality], streams[1 - modality]
            assert all(p.grad is not None for p in own.parameters())
            assert any(p.grad.abs().sum() > 0 for p in own.parameters())
            assert all(p.grad is None for p in other.parameters())


def test_convnext_non_local_blocks_follow_their_blocks():
    cfg = cfg_for("convnext_tiny", "MODEL.SHARED_FROM", "2",
                  "MODEL.NON_LOCAL_BLOCKS", "1, 4, 2, 0", "MODEL.NON_LOCAL_REDUCTION", "4")
    model = build_model(cfg, 3).eval()
    layer1, layer2, layer3 = model.visible.layer1, model.shared.layer2, model.shared.layer3
    # layer2 = [downsampling, 3 blocks]: 4 non-local blocks follow each of them.
    assert [len(s.non_local) for s in (layer1, layer2, layer3)] == [1, 4, 2]
    assert [len(s.blocks) for s in (layer1, layer2, layer3)] == [3, 4, 10]
    assert [nl.theta.in_channels for nl in layer2.non_local] == [192] * 4
    assert layer1.non_local[0].inner == 96 // 4 and layer3.non_local[0].inner == 384 // 4
    assert model.visible.layer1.non_local[0] is not model.infrared.layer1.non_local[0]

    order: list[str] = []
    for name, module in layer2.named_children():
        for i, child in enumerate(module):
            child.register_forward_hook(lambda *_, tag=f"{name}{i}": order.append(tag))
    with torch.no_grad():
        feat = model(torch.randn(2, 3, *IMAGE), torch.tensor([0, 1]))
    assert feat.shape == (2, 768) and torch.isfinite(feat).all()
    assert order == ["blocks0", "non_local0", "blocks1", "non_local1", "blocks2", "non_local2",
                     "blocks3", "non_local3"]
    assert all(isinstance(m, NonLocalBlock) for m in layer2.non_local)


def test_convnext_refuses_more_non_local_blocks_than_stage_entries():
    with pytest.raises(UserError, match=r"asks for 5 blocks in layer2, which has 4 blocks"):
        build_model(cfg_for("convnext_tiny", "MODEL.NON_LOCAL_BLOCKS", "0, 5, 0, 0"), 3)


@pytest.mark.parametrize("name", OTHERS)
def test_one_optimizer_step_trains_every_group(name):
    cfg = cfg_for(name, "MODEL.SHARED_FROM", "1", "MODEL.NON_LOCAL_BLOCKS", "0, 0, 1, 0",
                  "LOSS.TERMS", "id, triplet, center", "TRAIN.BASE_LR", "0.01")
    model = build_model(cfg, 2)
    criterion = build_criterion(cfg, 2, model.feat_dim)
    optimizer = build_optimizer(cfg, model, criterion)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = model(torch.randn(4, 3, *IMAGE), torch.tensor([0, 0, 1, 1]))
    loss, terms = criterion(out, torch.tensor([0, 1, 0, 1]), torch.tensor([0, 0, 1, 1]))
    assert torch.isfinite(loss) and set(terms) == {"loss_id", "loss_tri", "loss_center"}
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    groups = {g["name"] for g in optimizer.param_groups}
    assert {"backbone", "backbone_bias", "new", "new_bias"} <= groups
    for name_part in ("visible.stem", "infrared.stem", "shared.layer4", "non_local",
                      "classifier.weight", "neck.weight"):
        assert any(name_part in n for n in changed), name_part
    # The BNNeck's shift is frozen.
    assert "neck.bias" not in changed


# Where one tensor of torchvision's state dict lands in the model (SHARED_FROM 1).
LANDING = {
    "resnext50_32x4d": [("conv1.weight", "visible.stem.0.weight"),
                        ("layer4.2.conv3.weight", "shared.layer4.blocks.2.conv3.weight")],
    "convnext_tiny": [("features.0.0.weight", "visible.stem.0.weight"),
                      ("features.6.1.weight", "shared.layer4.blocks.0.1.weight"),
                      ("features.7.2.block.0.weight", "shared.layer4.blocks.3.block.0.weight"),
                      ("features.5.8.layer_scale", "shared.layer3.blocks.9.layer_scale")],
}
WEIGHTS = {"resnext50_32x4d": torchvision.models.ResNeXt50_32X4D_Weights.IMAGENET1K_V1,
           "convnext_tiny": torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1}


def random_torchvision_state(name: str) -> dict[str, torch.Tensor]:
    """A randomly initialised torchvision state dict, classifier head included."""
    torch.manual_seed(7)
    return getattr(torchvision.models, name)(weights=None).state_dict()


def assert_landed(model: nn.Module, state: dict[str, torch.Tensor], name: str) -> None:
    params = model.state_dict()
    for source, target in LANDING[name]:
        assert torch.equal(params[target], state[source]), (source, target)
    assert torch.equal(params["infrared.stem.0.weight"], params["visible.stem.0.weight"])


@pytest.mark.parametrize("name", OTHERS)
def test_imagenet_weights_come_from_torchvisions_url(name, monkeypatch):
    state = random_torchvision_state(name)
    assert any(k.startswith(("fc.", "classifier.")) for k in state)
    asked = []

    def fake_download(url, **kwargs):
        asked.append((url, kwargs))
        return state

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", fake_download)
    model = build_model(cfg_for(name, "MODEL.PRETRAIN_PATH", "imagenet",
                                "MODEL.SHARED_FROM", "1"), 3)
    assert len(asked) == 1
    url, kwargs = asked[0]
    assert url == WEIGHTS[name].url and url.startswith("https://download.pytorch.org/models/")
    assert kwargs["weights_only"] is True and kwargs["check_hash"] is True
    assert_landed(model, state, name)


def test_convnext_weights_from_a_file(tmp_path):
    state = random_torchvision_state("convnext_tiny")
    path = tmp_path / "convnext_tiny.pth"
    torch.save({"state_dict": state}, path)
    model = build_model(cfg_for("convnext_tiny", "MODEL.PRETRAIN_PATH", str(path),
                                "MODEL.SHARED_FROM", "1"), 3)
    assert_landed(model, state, "convnext_tiny")
