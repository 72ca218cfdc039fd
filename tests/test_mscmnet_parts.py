"""MSCMNet parts: attention chain, four-stem front, QCT, published key table."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torchvision
from torch import nn

from data.transforms import PART_COPY, PART_PLAIN
from modeling.methods.mscmnet.parts import (
    AUX_PART,
    MAIN_PART,
    Float32LayerNorm,
    FourStemFront,
    MultiScaleAttentionChain,
    layer3_size,
    published_key_table,
    quad_center_triplet,
    stage_sizes,
    unused_group,
)
from tests.published_tables import mscmnet_parts as published_parts
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

STRIDES = (4, 1, 2, 2, 1)  # modeling.backbone's ResNet strides, LAST_STRIDE 1
R18 = (64, 64, 128, 256)  # resnet18: stem, layer1, layer2, layer3 channels
R50 = (64, 256, 512, 1024)


def resnet18_parts():
    torch.manual_seed(0)
    net = torchvision.models.resnet18()
    return nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), net


def small_chain(heads: int = 6) -> MultiScaleAttentionChain:
    torch.manual_seed(0)
    return MultiScaleAttentionChain.for_input((96, 48), R18, STRIDES, heads=heads)


def earlier_maps(batch: int = 2) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(batch, c, h, w, generator=g)
            for c, (h, w) in zip(R18, stage_sizes((96, 48), STRIDES))]


@pytest.mark.parametrize("size", [(96, 48), (100, 52), (384, 192)])
def test_stage_sizes_are_the_resnet_outputs(size):
    stem, net = resnet18_parts()
    x = stem(torch.zeros(1, 3, *size))
    got = [tuple(x.shape[-2:])]
    for layer in (net.layer1, net.layer2, net.layer3):
        x = layer(x)
        got.append(tuple(x.shape[-2:]))
    assert stage_sizes(size, STRIDES)[:4] == got
    assert layer3_size(size, STRIDES) == got[3]


def test_published_size_gives_the_published_blocks():
    chain = MultiScaleAttentionChain.for_input((384, 192), R50, STRIDES, heads=32)
    assert layer3_size((384, 192), STRIDES) == (24, 12)
    convs = [(b.earlier_narrow.kernel_size, b.earlier_narrow.stride, b.earlier_narrow.padding)
             for b in chain.blocks[:3]]
    assert convs == [((6, 6), (4, 4), (2, 2))] * 2 + [((4, 4), (2, 2), (1, 1))]
    assert chain.blocks[3].earlier_narrow is None and chain.blocks[3].norm_earlier is None
    # Used parameters per block, as counted in the published network.
    counts = [sum(p.numel() for p in b.parameters()) for b in chain.blocks]
    assert counts == [2_115_296, 3_884_768, 3_622_624, 1_524_640]
    attn = chain.blocks[0].attention
    assert attn.num_heads == 32 and attn.head_dim == 9 and attn.in_proj_weight.shape == (864, 288)


def test_shapes_through_stems_backbone_and_chain():
    stem, net = resnet18_parts()
    front, chain = FourStemFront(stem), small_chain()
    img = torch.randn(8, 3, 96, 48)
    modality = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    part = torch.tensor([PART_PLAIN, PART_PLAIN, PART_COPY, PART_COPY] * 2)
    s = front(img, modality, part)
    l1 = net.layer1(s)
    l2 = net.layer2(l1)
    l3 = net.layer3(l2)
    out = chain(l3, [s, l1, l2, l3])
    assert out.shape == l3.shape == (8, 256, 6, 3)
    assert torch.equal(chain(l3, {"stem": s, "layer1": l1, "layer2": l2}), out)
    assert torch.equal(chain(l3, [s, l1, l2]), out)


def layer_norm(x):
    mean = x.mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)


def attention(q_in, k_in, v_in, mha):
    """Multi-head attention from the module's projection weights, head by head."""
    e, h = mha.embed_dim, mha.num_heads
    w, b = mha.in_proj_weight, mha.in_proj_bias
    q, k, v = (x @ w[i * e:(i + 1) * e].t() + b[i * e:(i + 1) * e]
               for i, x in enumerate((q_in, k_in, v_in)))
    d = e // h
    heads = []
    for j in range(h):
        sl = slice(j * d, (j + 1) * d)
        a = torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(d), dim=-1)
        heads.append(a @ v[..., sl])
    return torch.cat(heads, -1) @ mha.out_proj.weight.t() + mha.out_proj.bias


@torch.no_grad()
def test_block_follows_the_published_formula():
    chain = small_chain(heads=3)
    for block in chain.blocks:  # move LN affine parameters off their identity init
        for ln in (block.norm_tokens, block.norm_mlp, block.norm_earlier):
            if ln is not None:
                ln.weight.normal_(1, 0.2)
                ln.bias.normal_(0, 0.2)
    maps = earlier_maps()
    x = maps[3]
    for i, block in enumerate(chain.blocks):
        u = layer_norm(block.narrow(x).flatten(2)) * block.norm_tokens.weight \
            + block.norm_tokens.bias
        if i < 3:
            v = layer_norm(block.earlier_narrow(maps[i]).flatten(2)) * block.norm_earlier.weight \
                + block.norm_earlier.bias
            u = u + 0.1 * v
            u = u + attention(v, v, u, block.attention)
        else:
            u = u + attention(u, u, u, block.attention)
        h = layer_norm(u) * block.norm_mlp.weight + block.norm_mlp.bias
        h = block.mlp[0](h)
        u = u + block.mlp[2](h * torch.sigmoid(1.702 * h))
        expected = block.broaden(u.reshape(x.shape[0], -1, 6, 3))
        assert torch.allclose(block(x, maps[i] if i < 3 else None), expected, atol=1e-5), i
        x = expected
    assert torch.allclose(chain(maps[3], maps), x, atol=1e-5)


@torch.no_grad()
def test_no_residual_around_the_blocks_and_block3_ignores_earlier_maps():
    chain = small_chain()
    maps = earlier_maps()
    nn.init.zeros_(chain.blocks[3].broaden.weight)
    nn.init.zeros_(chain.blocks[3].broaden.bias)
    assert torch.equal(chain(maps[3], maps), torch.zeros_like(maps[3]))
    block = chain.blocks[3]
    x = maps[3]
    assert torch.equal(block(x, None), block(x, torch.randn(2, 256, 6, 3)))


def test_only_the_parts_that_run_are_built():
    chain = small_chain()
    maps = [m.requires_grad_() for m in earlier_maps()]
    chain(maps[3], maps).square().sum().backward()
    unused = [n for n, p in chain.named_parameters() if p.grad is None or not p.grad.any()]
    assert unused == []
    assert all(m.grad is not None and m.grad.any() for m in maps)


def test_layer_norm_runs_in_float32():
    ln = Float32LayerNorm(18)
    x = torch.randn(2, 4, 18).to(torch.bfloat16)
    out = ln(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, nn.functional.layer_norm(x.float(), (18,)).to(torch.bfloat16))


def test_sizes_the_chain_cannot_take_are_one_line_errors():
    with pytest.raises(UserError, match=r"^DATA.SIZE_TRAIN 64,32 gives a 4x2 layer3 map: its 8 "
                                        r"token dims are not divisible by MSCMNET.HEADS 32"):
        MultiScaleAttentionChain.for_input((64, 32), R18, STRIDES)
    with pytest.raises(UserError, match=r"DATA.SIZE_TRAIN 100,50 gives a 7x4 layer3 map and a "
                                        r"25x13 stem map"):
        MultiScaleAttentionChain.for_input((100, 50), R18, STRIDES, heads=1)
    # A stride-1 layer3 leaves layer2's map at layer3's size: no published convolution for it.
    with pytest.raises(UserError, match=r"gives a 12x6 layer3 map and a 12x6 layer2 map"):
        MultiScaleAttentionChain.for_input((96, 48), R18, (4, 1, 2, 1, 1), heads=6)
    chain = small_chain()
    maps = [torch.zeros(1, c, 2 * h, w) for c, (h, w) in zip(R18, stage_sizes((96, 48), STRIDES))]
    with pytest.raises(UserError, match=r"built for DATA.SIZE_TRAIN 96,48 \(maps 24x12, 24x12, "
                                        r"12x6, 6x3\) and got maps 48x12"):
        chain(maps[3], maps)


def distinct_stems(front: FourStemFront) -> None:
    with torch.no_grad():
        for i, name in enumerate(("visible", "visible_aux", "infrared", "infrared_aux")):
            getattr(front, name)[0].weight.mul_(1.0 + 0.5 * i)


def test_training_routes_each_view_to_its_stem_in_batch_order():
    stem, _ = resnet18_parts()
    front = FourStemFront(stem)
    distinct_stems(front)
    reference = copy.deepcopy(front)
    img = torch.randn(10, 3, 32, 16)
    modality = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0, 0, 1])
    part = torch.tensor([0, 1, 0, 1, 0, 0, 1, 1, 0, 1])
    out = front.train()(img, modality, part)
    assert out.shape == (10, 64, 8, 4)
    for (m, p), name in (((0, MAIN_PART), "visible"), ((0, AUX_PART), "visible_aux"),
                         ((1, MAIN_PART), "infrared"), ((1, AUX_PART), "infrared_aux")):
        idx = torch.nonzero((modality == m) & (part == p)).squeeze(1)
        # Train-mode BatchNorm: each stem normalises over its own group, as published.
        assert torch.allclose(out[idx], getattr(reference, name)(img[idx]), atol=1e-6), name
    assert (MAIN_PART, AUX_PART) == (PART_PLAIN, PART_COPY)


def test_evaluation_averages_both_stems_of_the_modality():
    stem, _ = resnet18_parts()
    front = FourStemFront(stem).eval()
    distinct_stems(front)
    img = torch.randn(5, 3, 32, 16)
    modality = torch.tensor([1, 0, 1, 1, 0])
    out = front(img, modality)
    for i, m in enumerate(modality.tolist()):
        pair = ("visible", "visible_aux") if m == 0 else ("infrared", "infrared_aux")
        x = img[i:i + 1]
        expected = (getattr(front, pair[0])(x) + getattr(front, pair[1])(x)) / 2
        assert torch.allclose(out[i:i + 1], expected, atol=1e-6), i
    assert not torch.allclose(front.visible(img[:1]), front.visible_aux(img[:1]))
    with pytest.raises(ValueError, match="training needs the part"):
        front.train()(img, modality)
    with pytest.raises(ValueError, match="modality ids must be 0 or 1"):
        front.train()(img, torch.tensor([0, 0, 2, 1, 1]), torch.zeros(5, dtype=torch.long))


# QCT: 2 ids x [V1 | V2 | I1 | I2], 1-d features.
#   id0: V 0.0, 1.0; I 2.4, 2.6 -> c^V 0.5, c^I 2.5, c^A 1.5
#   id1: V 1.2, 2.0; I 1.6, 0.4 -> c^V 1.6, c^I 1.0, c^A 1.3
QCT_FEAT = [[0.0], [1.2], [1.0], [2.0], [2.4], [1.6], [2.6], [0.4]]
QCT_PID = [0, 1, 0, 1, 0, 1, 0, 1]
QCT_MOD = [0, 0, 0, 0, 1, 1, 1, 1]


def qct_batch(requires_grad: bool = False):
    feat = torch.tensor(QCT_FEAT, requires_grad=requires_grad)
    return feat, torch.tensor(QCT_PID), torch.tensor(QCT_MOD)


def test_qct_hand_computed_value_and_batch_order():
    # pos: id0 V |0-2.5|, |1-2.5|; I |2.4-0.5|, |2.6-0.5| -> 2.5 1.5 1.9 2.1
    #      id1 V |1.2-1|, |2-1|;   I |1.6-1.6|, |0.4-1.6| -> 0.2 1.0 0.0 1.2;  mean 10.4/8
    # neg (margin 0.7): id0 vs c^A1 1.3: 1.3, 0.3, 1.1, 1.3 -> 0, 0.4, 0, 0
    #                   id1 vs c^A0 1.5: 0.3, 0.5, 0.1, 1.1 -> 0.4, 0.2, 0.6, 0;  mean 1.6/8
    feat, pid, mod = qct_batch()
    expected = (10.4 / 8 + 1.6 / 8) / 2
    assert quad_center_triplet(feat, pid, mod).item() == pytest.approx(expected, abs=1e-5)
    perm = torch.tensor([5, 2, 7, 0, 3, 6, 1, 4])
    assert quad_center_triplet(feat[perm], pid[perm], mod[perm]).item() == \
        pytest.approx(expected, abs=1e-5)
    # margin 2: every neg active: id0 0.7+1.7+0.9+0.7, id1 1.7+1.5+1.9+0.9 -> 10/8
    assert quad_center_triplet(feat, pid, mod, margin=2.0).item() == \
        pytest.approx((10.4 / 8 + 10 / 8) / 2, abs=1e-5)


def test_qct_gradient_flows_through_the_centres():
    # d/dx of the id0 I1 row (x = 2.4), QCT = (sum pos + sum neg) / 16:
    #   pos: its own |x - c^V0| -> 1; id0's V rows pull to c^I0 = (x + 2.6) / 2 -> 1/2 + 1/2
    #   neg: id1 rows vs c^A0 = (0 + 1 + x + 2.6) / 4 (active: 1.2 -> -1/4, 2.0 -> +1/4,
    #        1.6 -> +1/4); its own hinge is inactive (1.1 > 0.7)
    feat, pid, mod = qct_batch(requires_grad=True)
    quad_center_triplet(feat, pid, mod).backward()
    assert feat.grad[4, 0].item() == pytest.approx((2 + 0.25) / 16, abs=1e-6)
    assert torch.isfinite(feat.grad).all()  # row 5 sits on its other-modality centre


def test_qct_coincident_points_give_finite_gradients():
    feat = torch.zeros(8, 3, requires_grad=True)
    _, pid, mod = qct_batch()
    loss = quad_center_triplet(feat, pid, mod)
    loss.backward()
    assert loss.item() == pytest.approx(0.7 / 2, abs=1e-5)  # pos 0, every hinge 0.7
    assert torch.isfinite(feat.grad).all()


def published_qct(feat, pid, margin=0.7):
    """The published column mean, for a batch [V1 | V2 | I1 | I2] with equal ids per block."""
    n = len(feat)
    vis, ir = feat[:n // 2], feat[n // 2:]
    total = 0.0
    for i in range(n):
        other = ir if i < n // 2 else vis
        c_other = other[pid[n // 2:] == pid[i]].mean(0) if i < n // 2 else \
            other[pid[:n // 2] == pid[i]].mean(0)
        total += (feat[i] - c_other).norm()
    hinge = 0.0
    for i in range(n):
        cols = [(margin - (feat[i] - feat[pid == pid[j]].mean(0)).norm()).clamp(min=0)
                for j in range(n) if pid[j] != pid[i]]
        hinge += sum(cols) / len(cols)
    return (total / n + hinge / n) / 2


def test_qct_matches_the_published_column_mean_on_sampler_batches():
    g = torch.Generator().manual_seed(0)
    block = torch.tensor([3, 3, 7, 7, 9, 9])  # 3 ids x 2, each block of the four alike
    pid = block.repeat(4)
    mod = torch.tensor([0] * 12 + [1] * 12)
    feat = torch.randn(24, 5, generator=g) * 0.3
    assert quad_center_triplet(feat, pid, mod).item() == \
        pytest.approx(published_qct(feat.double(), pid).item(), abs=1e-5)


def test_qct_rejects_identities_without_both_modalities():
    feat, pid, mod = qct_batch()
    with pytest.raises(ValueError, match=r"identities lacking a modality: \[1\]"):
        quad_center_triplet(feat[:6], pid[:6], torch.tensor([0, 0, 0, 0, 1, 0]))
    with pytest.raises(ValueError, match="at least two identities"):
        quad_center_triplet(feat[::2], pid[::2], mod[::2])


@pytest.mark.parametrize("input_hw, channels, heads", [((96, 48), R18, 6),
                                                       ((384, 192), R50, 32)])
def test_key_table_is_a_bijection_onto_the_published_used_keys(input_hw, channels, heads):
    stem = torchvision.models.resnet50()
    model = nn.ModuleDict({
        "front": FourStemFront(nn.Sequential(stem.conv1, stem.bn1, stem.relu, stem.maxpool)),
        "attention": MultiScaleAttentionChain.for_input(input_hw, channels, STRIDES, heads)})
    published = published_parts(channels, layer3_size(input_hw, STRIDES))
    table, rest = published_key_table(model)
    ours = model.state_dict()
    assert rest == [] and set(table) == set(ours)
    assert len(set(table.values())) == len(table)
    used = {k for k in published if unused_group(k) is None}
    assert set(table.values()) == used
    for mine, theirs in table.items():
        assert tuple(ours[mine].shape) == published[theirs], mine
    # Spot checks written from the published forward pass.
    assert table["attention.blocks.1.earlier_narrow.weight"] == "layerATT1.ATT_narrow1.weight"
    assert table["attention.blocks.2.earlier_narrow.bias"] == "layerATT2.ATT_narrow2.bias"
    assert table["attention.blocks.0.norm_earlier.weight"] == "layerATT0.ln_1o.weight"
    assert table["attention.blocks.3.attention.in_proj_weight"] == "layerATT3.attn.in_proj_weight"
    assert table["front.infrared_aux.1.num_batches_tracked"] == \
        "thermal_moduleA.thermal.bn1.num_batches_tracked"
    # Loading a published state dict through the inverse table is strict.
    state = {mine: torch.randn(published[theirs]) if published[theirs] else torch.tensor(0)
             for mine, theirs in table.items()}
    model.load_state_dict(state, strict=True)
    labels = {unused_group(k) for k in published} - {None}
    assert len(labels) == 4 + 1 + 6 + 2  # four stems' layers, base stem, 6 convs/LN, 2 dead
