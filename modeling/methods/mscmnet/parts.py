"""MSCMNet's network parts (Hua et al., Pattern Recognition 2024; Hua-XC/MSCMNet).

- ``MultiScaleAttentionChain``: the four attention blocks between layer3 and
  layer4 (the paper's MIMB, the code's ``layerATT0..3``, ``model.py:90-160,
  413-416``). Tokens are channels: layer3's map is narrowed to C/4 channels,
  each a token whose embedding is its flattened H x W map.
- ``FourStemFront``: two stems per modality (the paper's QFE,
  ``model.py:185-258, 345-363``).
- ``quad_center_triplet``: the QCT loss as coded (``loss.py:245-326``).
- ``published_key_table`` and ``UNUSED_GROUPS``: where the released checkpoint
  keeps these parts' tensors, and its tensors that are built but never run.

Line numbers refer to the published ``model.py`` / ``loss.py`` at commit 5b5f874.
"""
from __future__ import annotations

import copy
import functools
import re
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

# The config key of the head count, named in the messages of unfit sizes.
HEADS_KEY = "MSCMNET.HEADS"
# Weight of the earlier stage's tokens added to layer3's before attention (model.py:140).
EARLIER_WEIGHT = 0.1
# Size ratio of an earlier map to layer3's -> (kernel, stride, padding) of the published
# convolution bringing it to layer3's size (ATT_narrow1: 4x, ATT_narrow2: 2x; model.py:106-107).
DOWNSAMPLING = {4: (6, 4, 2), 2: (4, 2, 1)}
# Names of the earlier maps, in the chain's order.
EARLIER_NAMES = ("stem", "layer1", "layer2")
# Batch parts, the values of data.transforms.PART_PLAIN / PART_COPY: the sampled view
# goes through the modality's main stem, the second view through its auxiliary one.
MAIN_PART, AUX_PART = 0, 1


def stage_sizes(input_hw: Sequence[int], strides: Sequence[int]) -> list[tuple[int, int]]:
    """Output (H, W) of each backbone stage for an input of ``input_hw``.

    A ResNet stage of stride s gives ceil(n / s): its stride-2 convolutions and
    max-pool are padded (kernel 2p + 1, padding p).

    Args:
        input_hw: (H, W) of the image.
        strides: each stage's stride (``modeling.backbone.Backbone.strides``).
    """
    h, w = input_hw
    sizes = []
    for s in strides:
        h, w = -(-h // s), -(-w // s)
        sizes.append((h, w))
    return sizes


def layer3_size(input_hw: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """(H, W) of layer3's map (384x192 with strides 4, 1, 2, 2 -> 24x12)."""
    return stage_sizes(input_hw, strides)[3]


def earlier_downsampling(in_channels: int, out_channels: int, ratio: int) -> nn.Conv2d:
    """The published convolution shrinking an earlier map ``ratio`` (4 or 2) times."""
    kernel, stride, padding = DOWNSAMPLING[ratio]
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding)


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation; ``QuickGLUE`` in model.py:82-88)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32, returned in the input's dtype (model.py:73-80)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.float()).to(x.dtype)


class ChannelTokenAttention(nn.Module):
    """One attention block (``layerATT``), with only the parts that run.

    With ``narrow`` a 1x1 conv C -> C/4, N = H * W and LN the float32 LayerNorm
    over N (the tokens are the C/4 channels)::

        u = LN_tokens(narrow(x))                          # (B, C/4, N)
        v = LN_earlier(earlier_narrow(earlier))           # (B, C/4, N); if any
        u = u + 0.1 v;  u = u + MHA(query=v, key=v, value=u)
        (without an earlier map: u = u + MHA(u, u, u))
        u = u + MLP(LN_mlp(u))                            # N -> 4N -> N, QuickGELU
        out = broaden(u as (B, C/4, H, W))                # 1x1 conv C/4 -> C

    There is no residual around the block: its output replaces x.

    Args:
        channels: C of layer3's map.
        size: (H, W) of layer3's map.
        heads: attention heads; must divide H * W.
        earlier_channels: channels of the earlier map; 0 = self-attention (block 3).
        ratio: how many times the earlier map is larger than layer3's (4 or 2).
    """

    def __init__(self, channels: int, size: tuple[int, int], heads: int,
                 earlier_channels: int = 0, ratio: int = 0) -> None:
        super().__init__()
        width, dim = channels // 4, size[0] * size[1]
        self.size, self.ratio = tuple(size), ratio
        self.narrow = nn.Conv2d(channels, width, kernel_size=1)
        self.norm_tokens = Float32LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm_mlp = Float32LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), QuickGELU(), nn.Linear(4 * dim, dim))
        self.broaden = nn.Conv2d(width, channels, kernel_size=1)
        self.earlier_narrow = (earlier_downsampling(earlier_channels, width, ratio)
                               if earlier_channels else None)
        self.norm_earlier = Float32LayerNorm(dim) if earlier_channels else None

    def forward(self, x: torch.Tensor, earlier: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, H, W), earlier (B, C_l, rH, rW) or None -> (B, C, H, W)."""
        u = self.norm_tokens(self.narrow(x).flatten(2))
        if self.earlier_narrow is None:
            u = u + self.attention(u, u, u, need_weights=False)[0]
        else:
            v = self.norm_earlier(self.earlier_narrow(earlier).flatten(2))
            u = u + EARLIER_WEIGHT * v
            u = u + self.attention(v, v, u, need_weights=False)[0]
        u = u + self.mlp(self.norm_mlp(u))
        # A view that keeps the batch axis its own size (a traced unflatten fixes it).
        return self.broaden(u.view(u.shape[0], u.shape[1], *self.size))


def _ratio(earlier: tuple[int, int], size: tuple[int, int]) -> int | None:
    """The integer size ratio of ``earlier`` to ``size``, equal both ways, else None."""
    (eh, ew), (h, w) = earlier, size
    if eh % h or ew % w or eh // h != ew // w:
        return None
    return eh // h


class MultiScaleAttentionChain(nn.Module):
    """The four attention blocks: blocks 0..2 attend with the stem, layer1 and layer2
    maps as queries and keys; block 3 is self-attention. ``x`` is replaced by each
    block's output (model.py:413-416).

    Args:
        channels: channels of the stem, layer1, layer2 and layer3 maps.
        sizes: (H, W) of those four maps.
        heads: attention heads (published: 32 on 24 x 12 = 288 dims).
        where: the input size the maps come from, for messages (e.g. "DATA.SIZE_TRAIN 64,32").

    Raises:
        UserError: a head count that does not divide H3 * W3, or an earlier map
            that is not 2 or 4 times layer3's size both ways.
    """

    def __init__(self, channels: Sequence[int], sizes: Sequence[Sequence[int]], heads: int = 32,
                 where: str = "the input size") -> None:
        super().__init__()
        if len(channels) != 4 or len(sizes) != 4:
            raise ValueError("the chain needs the channels and sizes of the stem, layer1, "
                             f"layer2 and layer3 maps; got {channels} and {sizes}")
        sizes = [tuple(s) for s in sizes]
        size, dim = sizes[3], sizes[3][0] * sizes[3][1]
        layer3 = f"{where} gives a {size[0]}x{size[1]} layer3 map"
        if heads < 1 or dim % heads:
            raise UserError(f"{layer3}: its {dim} token dims are not divisible by {HEADS_KEY} "
                            f"{heads}; choose heads that divide {dim} or another input size")
        if channels[3] % 4:
            raise ValueError(f"layer3 has {channels[3]} channels; the blocks narrow them to a "
                             "quarter, so they must be a multiple of 4")
        blocks = []
        for name, c, s in zip(EARLIER_NAMES, channels, sizes):
            ratio = _ratio(s, size)
            if ratio not in DOWNSAMPLING:
                raise UserError(f"{layer3} and a {s[0]}x{s[1]} {name} map: the attention "
                                "blocks take earlier maps 2 or 4 times layer3's size in both "
                                "directions; choose an input size divisible by 16")
            blocks.append(ChannelTokenAttention(channels[3], size, heads, c, ratio))
        blocks.append(ChannelTokenAttention(channels[3], size, heads))
        self.blocks = nn.ModuleList(blocks)
        self.sizes, self.where = sizes, where

    @classmethod
    def for_input(cls, input_hw: Sequence[int], channels: Sequence[int],
                  strides: Sequence[int], heads: int = 32,
                  size_key: str = "DATA.SIZE_TRAIN") -> MultiScaleAttentionChain:
        """Build the chain for images of ``input_hw`` through a backbone of these stage
        ``channels`` and ``strides`` (stem, layer1, ... as ``Backbone``)."""
        where = f"{size_key} {input_hw[0]},{input_hw[1]}"
        return cls(channels[:4], stage_sizes(input_hw, strides)[:4], heads, where)

    def forward(self, x: torch.Tensor,
                earlier: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Run the four blocks.

        Args:
            x: (B, C3, H3, W3) layer3's output.
            earlier: the stem, layer1 and layer2 outputs (B, C_i, H_i, W_i), as a
                sequence in that order (a fourth entry, layer3's map, is ignored) or
                a mapping with those names.

        Returns:
            (B, C3, H3, W3).

        Raises:
            UserError: maps of another size than the chain was built for.
        """
        maps = ([earlier[n] for n in EARLIER_NAMES] if isinstance(earlier, Mapping)
                else list(earlier)[:3])
        got = [tuple(m.shape[-2:]) for m in maps] + [tuple(x.shape[-2:])]
        if got != self.sizes:
            raise UserError(f"the attention blocks were built for {self.where} (maps "
                            f"{_sizes(self.sizes)}) and got maps {_sizes(got)}: every image "
                            "must have that size")
        for block, m in zip(self.blocks, maps):
            x = block(x, m)
        return self.blocks[3](x)


def _sizes(sizes: Sequence[tuple[int, int]]) -> str:
    return ", ".join(f"{h}x{w}" for h, w in sizes)


class FourStemFront(nn.Module):
    """Two stems per modality, each a copy of the backbone's stem (model.py:345-363).

    Training: each image goes through the stem of its modality and part
    (MAIN_PART -> ``visible`` / ``infrared``, AUX_PART -> ``visible_aux`` /
    ``infrared_aux``). Evaluation: each image goes through both stems of its
    modality and the two outputs are averaged. The batch order is kept.

    Args:
        stem: the backbone stem (B, 3, H, W) -> (B, C0, h, w); it becomes ``visible``,
            the three others are deep copies of it.
    """

    def __init__(self, stem: nn.Module) -> None:
        super().__init__()
        self.visible = stem
        self.visible_aux = copy.deepcopy(stem)
        self.infrared = copy.deepcopy(stem)
        self.infrared_aux = copy.deepcopy(stem)
        self.routes = {(VISIBLE, MAIN_PART): "visible", (VISIBLE, AUX_PART): "visible_aux",
                       (INFRARED, MAIN_PART): "infrared", (INFRARED, AUX_PART): "infrared_aux"}
        self.pairs = {VISIBLE: ("visible", "visible_aux"), INFRARED: ("infrared", "infrared_aux")}

    def single(self, img: torch.Tensor, modality: int) -> torch.Tensor:
        """The evaluation output for a batch whose images all have ``modality``: the
        mean of that modality's two stems, without indexing (so a trace keeps any batch)."""
        first, second = self.pairs[modality]
        return (getattr(self, first)(img) + getattr(self, second)(img)) / 2

    def forward(self, img: torch.Tensor, modality: torch.Tensor,
                part: torch.Tensor | None = None) -> torch.Tensor:
        """img (B, 3, H, W), modality (B,), part (B,) (training only) -> (B, C0, h, w)."""
        if modality.shape != img.shape[:1]:
            raise ValueError(f"modality has shape {tuple(modality.shape)}; expected "
                             f"({img.shape[0]},) for the images")
        if self.training:
            if part is None or part.shape != modality.shape:
                raise ValueError("training needs the part (main or auxiliary view) of each "
                                 f"image as a ({img.shape[0]},) tensor")
            groups = [((modality == m) & (part == p), getattr(self, name))
                      for (m, p), name in self.routes.items()]
        else:
            groups = [(modality == m, functools.partial(self.single, modality=m))
                      for m in self.pairs]
        outs, order = [], []
        for mask, stem in groups:
            idx = torch.nonzero(mask).squeeze(1)
            if idx.numel():
                outs.append(stem(img.index_select(0, idx)))
                order.append(idx)
        if sum(len(i) for i in order) != img.shape[0]:
            raise ValueError(f"modality ids must be {VISIBLE} or {INFRARED} and parts "
                             f"{MAIN_PART} or {AUX_PART}")
        if len(outs) == 1:
            return outs[0]
        return torch.cat(outs).index_select(0, torch.argsort(torch.cat(order)))


def _group_means(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """x (B, D), groups (K, B) bool, no empty row -> (K, D) mean of each group."""
    weights = groups.to(x.dtype)
    return (weights @ x) / weights.sum(dim=1, keepdim=True)


def quad_center_triplet(feat: torch.Tensor, pid: torch.Tensor, modality: torch.Tensor,
                        margin: float = 0.7) -> torch.Tensor:
    """MSCMNet's quadruple centre triplet loss (QCT) as coded (loss.py:245-326).

    Centres per identity k, grouped by label (the batch order does not matter):
    c^V_k over its visible rows (both views), c^I_k over its infrared rows, c^A_k
    over all its rows. For row i of identity y_i::

        pos_i = ||f_i - c^{other modality}_{y_i}||        (no margin, no hinge)
        neg_i = mean_{k != y_i} [margin - ||f_i - c^A_k||]+
        QCT   = (mean_i pos_i + mean_i neg_i) / 2

    The published code averages the hinge over the other rows' centres, which is
    the mean over the other identities when each has as many rows (the sampler's
    batches). Nothing is detached: gradients flow through the centres. The code's
    own-stream term (weight a = 0, loss.py:300-307) is not built. ``neg`` clamps
    the squared distance at 1e-12 before the root, as ``comp_dist``; ``pos`` is the
    plain norm (at a zero distance its gradient is 0 instead of the code's NaN).

    Args:
        feat: (B, D) pooled features before the BNNeck (computed in float32).
        pid: (B,) identity labels.
        modality: (B,) VISIBLE or INFRARED.
        margin: the hinge's margin (published 0.7, hard-coded in train.py:229).

    Returns:
        scalar loss.

    Raises:
        ValueError: an identity without rows of both modalities, fewer than two
            identities, or an unknown modality.
    """
    if feat.ndim != 2 or pid.shape != feat.shape[:1] or modality.shape != pid.shape:
        raise ValueError(f"QCT expects feat (B, D) with pid, modality (B,); got "
                         f"{tuple(feat.shape)}, {tuple(pid.shape)}, {tuple(modality.shape)}")
    feat = feat.float()
    ids, label = torch.unique(pid, return_inverse=True)
    same = label[None, :] == torch.arange(len(ids), device=pid.device)[:, None]  # (K, B)
    visible, infrared = modality == VISIBLE, modality == INFRARED
    if not bool((visible | infrared).all()):
        raise ValueError(f"modality ids must be {VISIBLE} (visible) or {INFRARED} (infrared)")
    vis_rows, ir_rows = same & visible[None, :], same & infrared[None, :]
    lacking = ids[~(vis_rows.any(dim=1) & ir_rows.any(dim=1))]
    if len(lacking) or len(ids) < 2:
        raise ValueError("QCT needs at least two identities, each with visible and infrared "
                         f"rows; identities lacking a modality: {lacking.tolist()}")
    c_vis, c_ir, c_all = (_group_means(feat, g) for g in (vis_rows, ir_rows, same))
    other_centre = torch.where(visible[:, None], c_ir[label], c_vis[label])
    pos = torch.linalg.vector_norm(feat - other_centre, dim=1)
    d2 = (feat.pow(2).sum(1)[:, None] + c_all.pow(2).sum(1)[None, :]
          - 2.0 * feat @ c_all.t())
    hinge = (margin - d2.clamp(min=1e-12).sqrt()).clamp(min=0.0)  # (B, K)
    others = ~same.t()
    neg = (hinge * others).sum(dim=1) / others.sum(dim=1)
    return (pos.mean() + neg.mean()) / 2


# Published tensors built but never run: (pattern, label), as modeling/published.py.
UNUSED_GROUPS = (
    (re.compile(r"^(visible_module\.visible|visible_moduleA\.visible|thermal_module\.thermal"
                r"|thermal_moduleA\.thermal)\.layer[1-4]\."),
     "{0}.layer1..4 (a whole ResNet per stem of which only conv1/bn1 run)"),
    (re.compile(r"^base_resnet\.base\.(conv1|bn1)\."),
     "base_resnet.base.conv1/bn1 (the shared ResNet's own stem, never run)"),
    (re.compile(r"^(layerATT[01]\.ATT_narrow2|layerATT2\.ATT_narrow1|layerATT3\.ATT_narrow[12]"
                r"|layerATT3\.ln_1o)\."),
     "{0} (an attention block's convolution or LayerNorm for another input, never run)"),
    (re.compile(r"^(local_conv|feat_bn2d)\."), "{0} (built in embed_net, never run)"),
)
# Our block's module -> the published layerATT's.
_BLOCK_NAMES = {"narrow": "ATT_narrow", "broaden": "ATT_broad", "attention": "attn",
                "norm_tokens": "ln_1", "norm_earlier": "ln_1o", "norm_mlp": "ln_2",
                "mlp.0": "mlp.c_fc", "mlp.2": "mlp.c_proj"}
# Our stem -> the published stem module; a stem is conv1, bn1, relu, maxpool.
_STEM_NAMES = {"visible": "visible_module.visible", "visible_aux": "visible_moduleA.visible",
               "infrared": "thermal_module.thermal", "infrared_aux": "thermal_moduleA.thermal"}
# Published earlier-map convolution by size ratio (ATT_narrow1: 4x, ATT_narrow2: 2x).
_DOWNSAMPLING_NAMES = {4: "ATT_narrow1", 2: "ATT_narrow2"}


def _prefix_rules(model: nn.Module) -> list[tuple[str, str]]:
    """(our key prefix, published key prefix) for every chain and four-stem front in model."""
    rules = []
    for name, module in model.named_modules():
        ours = f"{name}." if name else ""
        if isinstance(module, MultiScaleAttentionChain):
            for i, block in enumerate(module.blocks):
                mine, pub = f"{ours}blocks.{i}.", f"layerATT{i}."
                rules += [(f"{mine}{a}.", f"{pub}{b}.") for a, b in _BLOCK_NAMES.items()]
                if block.earlier_narrow is not None:
                    rules.append((f"{mine}earlier_narrow.",
                                  f"{pub}{_DOWNSAMPLING_NAMES[block.ratio]}."))
        elif isinstance(module, FourStemFront):
            for stem, pub in _STEM_NAMES.items():
                rules += [(f"{ours}{stem}.0.", f"{pub}.conv1."),
                          (f"{ours}{stem}.1.", f"{pub}.bn1.")]
    return rules


def published_key_table(model: nn.Module) -> tuple[dict[str, str], list[str]]:
    """Map the state-dict keys of the MSCMNet parts inside ``model`` onto the published ones.

    Args:
        model: a module holding a ``MultiScaleAttentionChain`` and / or a
            ``FourStemFront`` (or one of them), at any depth.

    Returns:
        (table, rest): ``table[our_key] = published_key`` for the parts' keys
        (e.g. ``blocks.0.earlier_narrow.weight`` -> ``layerATT0.ATT_narrow1.weight``,
        ``visible_aux.1.running_mean`` -> ``visible_moduleA.visible.bn1.running_mean``);
        ``rest`` lists the keys of ``model`` outside these parts.
    """
    rules = sorted(_prefix_rules(model), key=lambda r: len(r[0]), reverse=True)
    table, rest = {}, []
    for key in model.state_dict():
        rule = next((r for r in rules if key.startswith(r[0])), None)
        if rule is None:
            rest.append(key)
        else:
            table[key] = rule[1] + key[len(rule[0]):]
    return table, rest


def unused_group(key: str) -> str | None:
    """The label of a published tensor that is built but never run (None otherwise)."""
    for pattern, label in UNUSED_GROUPS:
        match = pattern.match(key)
        if match:
            return label.format(*match.groups())
    return None
