"""torchvision ResNets cut into stages, with pretrained weights and non-local blocks."""
from __future__ import annotations

import os
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from yacs.config import CfgNode

from layers.non_local import NonLocalBlock
from utils.errors import UserError

RESNETS: dict[str, Callable[..., torchvision.models.ResNet]] = {
    "resnet18": torchvision.models.resnet18,
    "resnet34": torchvision.models.resnet34,
    "resnet50": torchvision.models.resnet50,
    "resnet101": torchvision.models.resnet101,
}

# The five stages in order; MODEL.SHARED_FROM = i makes STAGES[:i] modality-specific.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")

# The original ImageNet weights (the ones reid baselines were tuned with).
IMAGENET_WEIGHTS = "IMAGENET1K_V1"

_SHOWN_KEYS = 5


class ResStage(nn.Module):
    """A ResNet stage (``blocks``) with non-local blocks after some of its blocks.

    Args:
        blocks: the stage's residual blocks (torchvision ``layerN``).
        non_local: the non-local blocks, placed after the last ``len(non_local)``
            residual blocks, one each (AGW's placement).
    """

    def __init__(self, blocks: nn.Sequential, non_local: list[NonLocalBlock]) -> None:
        super().__init__()
        self.blocks = blocks
        self.non_local = nn.ModuleList(non_local)
        first = len(blocks) - len(non_local)
        self._after = {first + i: i for i in range(len(non_local))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._after:
                x = self.non_local[self._after[i]](x)
        return x


def _short_list(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return ", ".join(keys[:_SHOWN_KEYS]) + more


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
                        f"{_short_list(bad)}")
    return state


def load_resnet_state(resnet: nn.Module, state: object, name: str, path: str) -> None:
    """Copy a torchvision ResNet state dict into ``resnet``; ``fc.*`` is ignored.

    Raises:
        UserError: naming ``path`` and the missing, unexpected or misshaped keys.
    """
    state = {k: v for k, v in _unwrap(state, path).items() if not k.startswith("fc.")}
    expected = {k: v for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    # Old checkpoints lack the BatchNorm batch counters; they carry no weights.
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})"
                 for k, v in state.items() if k in expected and v.shape != expected[k].shape]
    problems = []
    if missing:
        problems.append(f"missing keys: {_short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_short_list(unexpected)}")
    if misshaped:
        problems.append(f"wrong shapes: {_short_list(misshaped)}")
    if problems:
        raise UserError(f"MODEL.PRETRAIN_PATH = {path} does not fit MODEL.NAME = {name}: "
                        + "; ".join(problems))
    resnet.load_state_dict(state, strict=False)


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


def _file_state(path: str) -> object:
    if not os.path.isfile(path):
        raise UserError(f"MODEL.PRETRAIN_PATH = {path}: file not found")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"MODEL.PRETRAIN_PATH = {path}: cannot be read as a state dict of "
                        f"tensors ({reason})") from None


def build_resnet(cfg: CfgNode) -> torchvision.models.ResNet:
    """Build MODEL.NAME with MODEL.LAST_STRIDE and the weights of MODEL.PRETRAIN_PATH.

    PRETRAIN_PATH: empty = torchvision's random init; ``imagenet`` = torchvision's
    weights API (downloads once into the torch hub cache); otherwise a file holding
    a torchvision state dict, loaded with ``weights_only=True``.

    Raises:
        UserError: unknown name, weights unavailable, missing or unfitting file.
    """
    name = cfg.MODEL.NAME
    if name not in RESNETS:
        raise UserError(f"MODEL.NAME = {name!r} is not one of {', '.join(RESNETS)}")
    resnet = RESNETS[name](weights=None)
    source = cfg.MODEL.PRETRAIN_PATH
    if source:
        state = _imagenet_state(name) if source.lower() == "imagenet" else _file_state(source)
        load_resnet_state(resnet, state, name, source)
    set_last_stride(resnet, cfg.MODEL.LAST_STRIDE)
    return resnet


def set_last_stride(resnet: torchvision.models.ResNet, stride: int) -> None:
    """Set the stride of layer4's first block (2 in torchvision; 1 doubles the map)."""
    block = resnet.layer4[0]
    # torchvision puts the stride on conv2 of a Bottleneck and conv1 of a BasicBlock.
    conv = block.conv2 if isinstance(block, torchvision.models.resnet.Bottleneck) else block.conv1
    conv.stride = (stride, stride)
    if block.downsample is not None:
        block.downsample[0].stride = (stride, stride)


def resnet_stages(resnet: torchvision.models.ResNet, non_local_counts: tuple[int, ...],
                  reduction: int) -> dict[str, nn.Module]:
    """Cut ``resnet`` into the five STAGES, inserting MODEL.NON_LOCAL_BLOCKS.

    Args:
        resnet: a torchvision ResNet (its modules are reused, not copied).
        non_local_counts: non-local blocks per layer1..layer4.
        reduction: non-local inner width divisor.

    Raises:
        UserError: more non-local blocks asked for a stage than it has blocks.
    """
    stages: dict[str, nn.Module] = {
        "stem": nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool)}
    for i, count in enumerate(non_local_counts):
        name = f"layer{i + 1}"
        blocks = getattr(resnet, name)
        if count > len(blocks):
            raise UserError(f"MODEL.NON_LOCAL_BLOCKS = {', '.join(map(str, non_local_counts))} "
                            f"asks for {count} blocks in {name}, which has {len(blocks)} "
                            "residual blocks")
        channels = 64 * 2 ** i * type(blocks[0]).expansion
        stages[name] = ResStage(blocks, [NonLocalBlock(channels, reduction) for _ in range(count)])
    return stages


def feature_dim(resnet: torchvision.models.ResNet) -> int:
    """Channels of the last stage (512 for resnet18/34, 2048 for resnet50/101)."""
    return resnet.fc.in_features
