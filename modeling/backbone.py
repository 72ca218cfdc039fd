"""Backbones cut into five stages, with pretrained weights and non-local blocks.

``BACKBONES`` maps MODEL.NAME to a builder ``(cfg) -> Backbone``: the five
stages (stem, layer1..layer4) that ``MODEL.SHARED_FROM`` splits between the
modality streams and the shared trunk, and each stage's output channels. A new
backbone is one registered builder; the rest of the network (non-local blocks,
pooling, BNNeck, classifier) is added around its stages by ``modeling``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torchvision
from torch import nn
from yacs.config import CfgNode

from utils.errors import UserError
from utils.io import load_tensor_file
from utils.registry import Registry
from utils.state import short_list, state_problems

# The five stages in order; MODEL.SHARED_FROM = i makes STAGES[:i] modality-specific.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

# The original ImageNet weights (the ones reid baselines were tuned with).
IMAGENET_WEIGHTS = "IMAGENET1K_V1"


@dataclass
class Backbone:
    """A network cut into the five STAGES.

    Attributes:
        stem: the input stage (B, 3, H, W) -> (B, channels[0], h, w).
        layers: the four later stages, each an ``nn.Sequential`` of blocks (non-local
            blocks are inserted after its last blocks).
        channels: output channels of stem, layer1..layer4.
        strides: how much each of them shrinks its input's height and width.
    """

    stem: nn.Module
    layers: list[nn.Sequential]
    channels: tuple[int, int, int, int, int]
    strides: tuple[int, int, int, int, int]


# MODEL.NAME -> builder(cfg) -> Backbone (weights of MODEL.PRETRAIN_PATH loaded).
BACKBONES: Registry = Registry("MODEL.NAME", "backbone")


def _unwrap(state: object, path: str) -> dict[str, torch.Tensor]:
    """Return the tensor dict inside a checkpoint: plain, {'state_dict': ...} or {'model': ...}."""
    if isinstance(state, dict):
        for wrapper in ("state_dict", "model"):
            if isinstance(state.get(wrapper), dict):
                state = state[wrapper]
                break
    if not isinstance(state, dict) or not state:
        raise UserError(f"MODEL.PRETRAIN_PATH = {path}: not a state dict (expected a dict of "
                        "tensors, as saved by torch.save(model.state_dict()))")
    if all(isinstance(k, str) and k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}  # saved from DataParallel
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"MODEL.PRETRAIN_PATH = {path}: entries that are not tensors: "
                        f"{short_list(bad)}")
    return state


def load_pretrained_state(net: nn.Module, state: object, name: str, path: str,
                          head: str) -> None:
    """Copy a torchvision state dict into ``net``; the classification head is ignored.

    Args:
        net: the torchvision network.
        state: the loaded file (a state dict, possibly wrapped).
        name: MODEL.NAME, for messages.
        path: where the weights came from, for messages.
        head: key prefix of the ImageNet classifier (``fc.``, ``classifier.``).

    Raises:
        UserError: naming ``path`` and the missing, unexpected or misshaped keys.
    """
    state = {k: v for k, v in _unwrap(state, path).items() if not k.startswith(head)}
    # Old checkpoints lack the BatchNorm batch counters; they carry no weights.
    expected = {k: v for k, v in net.state_dict().items() if not k.startswith(head)
                and (k in state or not k.endswith("num_batches_tracked"))}
    problems = state_problems(expected, state)
    if problems:
        raise UserError(f"MODEL.PRETRAIN_PATH = {path} does not fit MODEL.NAME = {name}: "
                        + "; ".join(problems))
    net.load_state_dict(state, strict=False)


def _imagenet_state(name: str) -> dict[str, torch.Tensor]:
    weights = torchvision.models.get_model_weights(name)[IMAGENET_WEIGHTS]
    try:
        return torch.hub.load_state_dict_from_url(weights.url, map_location="cpu", progress=False,
                                                  check_hash=True, weights_only=True)
    except Exception as exc:  # offline, proxy, bad cache: all mean the same to the user
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(
            f"MODEL.PRETRAIN_PATH = imagenet: could not get torchvision's {name} "
            f"{IMAGENET_WEIGHTS} weights ({reason}); download {weights.url} and set "
            "MODEL.PRETRAIN_PATH to the file") from None


def torchvision_network(cfg: CfgNode, factory: Callable[..., nn.Module], head: str
                        ) -> nn.Module:
    """Build a torchvision network with the weights of MODEL.PRETRAIN_PATH.

    PRETRAIN_PATH: empty = torchvision's random init; ``imagenet`` = torchvision's
    weights API (downloads once into the torch hub cache); otherwise a file holding
    a torchvision state dict, loaded with ``weights_only=True``.

    Raises:
        UserError: weights unavailable, missing or unfitting file.
    """
    name = cfg.MODEL.NAME
    net = factory(weights=None)
    source = cfg.MODEL.PRETRAIN_PATH
    if source:
        state = (_imagenet_state(name) if source.lower() == "imagenet"
                 else load_tensor_file(source, "MODEL.PRETRAIN_PATH file"))
        load_pretrained_state(net, state, name, source, head)
    return net


def set_last_stride(resnet: torchvision.models.ResNet, stride: int) -> None:
    """Set the stride of layer4's first block (2 in torchvision; 1 doubles the map)."""
    block = resnet.layer4[0]
    # torchvision puts the stride on conv2 of a Bottleneck and conv1 of a BasicBlock.
    conv = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
    conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def _resnet(cfg: CfgNode, factory: Callable[..., torchvision.models.ResNet]) -> Backbone:
    """A torchvision ResNet / ResNeXt: stem = conv1, bn1, relu, maxpool; layer1..layer4."""
    net = torchvision_network(cfg, factory, "fc.")
    set_last_stride(net, cfg.MODEL.LAST_STRIDE)
    layers = [net.layer1, net.layer2, net.layer3, net.layer4]
    expansion = type(net.layer1[0]).expansion
    return Backbone(nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool), layers,
                    (64, *(64 * 2 ** i * expansion for i in range(4))),
                    (4, 1, 2, 2, cfg.MODEL.LAST_STRIDE))


class PaddedConv(nn.Conv2d):
    """A stride-1 convolution that first pads (kernel - 1) zero rows and columns at the
    bottom and right, so its output keeps the input's size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kh, kw = self.kernel_size
        return super().forward(nn.functional.pad(x, (0, kw - 1, 0, kh - 1)))


def _convnext(cfg: CfgNode, factory: Callable[..., nn.Module]) -> Backbone:
    """A torchvision ConvNeXt: stem = the 4x4 patchify; layer i = its downsampling
    (LayerNorm + 2x2 conv, kept as one module so that a non-local block never lands
    between the two; none before layer1) followed by the stage's blocks.

    LAST_STRIDE 1 keeps the last downsampling's 2x2 kernel with stride 1 after
    padding one row and column of zeros at the bottom and right, so layer4 keeps
    layer3's resolution (the re-ID habit).
    """
    net = torchvision_network(cfg, factory, "classifier.")
    f = net.features
    if cfg.MODEL.LAST_STRIDE == 1:
        merge = f[6][1]
        f[6][1] = PaddedConv(merge.in_channels, merge.out_channels, merge.kernel_size)
        f[6][1].load_state_dict(merge.state_dict())
    layers = [nn.Sequential(*f[1]), nn.Sequential(f[2], *f[3]), nn.Sequential(f[4], *f[5]),
              nn.Sequential(f[6], *f[7])]
    widths = [f[0][0].out_channels] + [layer[-1].block[0].in_channels for layer in layers]
    return Backbone(f[0], layers, tuple(widths), (4, 1, 2, 2, cfg.MODEL.LAST_STRIDE))


for _name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d"):
    BACKBONES[_name] = partial(_resnet, factory=getattr(torchvision.models, _name))
BACKBONES["convnext_tiny"] = partial(_convnext, factory=torchvision.models.convnext_tiny)
