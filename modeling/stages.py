"""The five stages of the network and the modules methods insert in them.

A method inserts modules through one entry in ``INSERTIONS`` (see
:class:`Insertion`): it builds them for a stage from the config, declares their
learning-rate group and where they go. Two places exist:

- *inside* a stage: after its last blocks, one module per block (AGW's non-local
  blocks);
- *after* a stage: ``module(x, ctx)`` on the stage's output, where ``ctx`` gives the
  stage's input, the earlier stages' outputs (``ctx.taps``) and ``ctx.record`` to hand
  an extra output to the losses (DEEN's MFA and expansion; several after one stage
  run in the entries' ``order``).

Inserted modules sit inside the stages, so they follow ``MODEL.SHARED_FROM`` like the
backbone does (one copy per modality stream in a modality-specific stage). A module
that stacks new embeddings on the batch axis says so with an attribute
``views_factor`` (DEEN's expansion: 1 + branches): the later stages see that many
times the batch.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from yacs.config import CfgNode

from modeling.backbone import Backbone
from utils.errors import UserError
from utils.registry import Registry


@dataclass
class StageContext:
    """What a module inserted after a stage may read besides the stage's output.

    Attributes:
        input: the stage's input (B, C_in, H', W').
        taps: outputs of the stages run so far in this stream, by stage name
            (``stem``, ``layer1``, ...).
        extras: extra outputs recorded for the losses (training mode only).
    """

    input: torch.Tensor | None = None
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def record(self, name: str, value: torch.Tensor) -> None:
        """Hand ``value`` to the loss terms as ``outputs[name]``."""
        if name in self.extras:
            raise ValueError(f"two inserted modules record the output {name!r}")
        self.extras[name] = value


@dataclass(frozen=True)
class Insertion:
    """How a method inserts a module in the backbone's stages.

    Attributes:
        build: ``build(cfg, stage, backbone)`` for stage 1..4 (layer1..layer4) ->
            None (nothing in this stage), a module (after the stage), or for
            ``inside`` a list of modules (after the stage's last blocks).
        inside: between the stage's blocks instead of after the stage.
        attr: the module's attribute name after a stage (its state-dict keys).
        call: ``call(module, x, ctx)`` -> the stage's new output; default ``module(x)``.
        order: modules after one stage run in increasing order.
        lr_group: the learning-rate group of its parameters (``solver.optimizer``).
    """

    build: Callable[[CfgNode, int, Backbone], nn.Module | list[nn.Module] | None]
    inside: bool = False
    attr: str = ""
    call: Callable[[nn.Module, torch.Tensor, StageContext], torch.Tensor] | None = None
    order: int = 100
    lr_group: str = "inserted"


# Name -> how a method inserts its module; every entry is asked for every stage.
INSERTIONS: Registry = Registry("insertion", "inserted module", config_keys=())


@dataclass(frozen=True)
class Front:
    """How a method replaces the modality-specific front (the first MODEL.SHARED_FROM
    stages, one copy per modality).

    Attributes:
        build: ``build(cfg, stages)`` with the five stages by name -> None (the
            method is off in this config) or a module called
            ``front(img, modality, part)`` -> the output of the stage before the shared
            ones, (B, C, h, w), in batch order. ``part`` (B,) is the batch part of each
            image (``data.transforms.PART_PLAIN`` / ``PART_COPY``) in training, None at
            test time. The module's parameters need ``lr_group`` attributes. A front
            that can be exported (``engine.export``) also has ``single(img, modality)``
            -> the same output when every image has the one ``modality`` (an int),
            computed without indexing by modality.
    """

    build: Callable[[CfgNode, dict[str, nn.Module]], nn.Module | None]


# Name -> a front a method builds instead of the per-modality copies; at most one
# entry may build a module for a config.
FRONTS: Registry = Registry("front", "network front", config_keys=())


def build_front(cfg: CfgNode, stages: dict[str, nn.Module]) -> nn.Module | None:
    """The front a registered method builds for ``cfg`` (None = the per-modality copies).

    Raises:
        UserError: two methods build a front for the same config.
    """
    built = [(name, module) for name, spec in FRONTS.items()
             if (module := spec.build(cfg, stages)) is not None]
    if len(built) > 1:
        raise UserError(f"two network fronts asked at once: {', '.join(n for n, _ in built)}; "
                        "choose one")
    return built[0][1] if built else None


class Stage(nn.Module):
    """A backbone stage (``blocks``) with modules after some of its blocks.

    Args:
        blocks: the stage's blocks (e.g. torchvision ``layerN``).
        non_local: modules placed after the last ``len(non_local)`` blocks, one each
            (AGW's non-local placement; the name keeps the state-dict keys).
    """

    def __init__(self, blocks: nn.Sequential, non_local: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = blocks
        self.blocks.lr_group = "backbone"
        self.non_local = nn.ModuleList(non_local)
        first = len(blocks) - len(non_local)
        self._after = {first + i: i for i in range(len(non_local))}

    def forward(self, x: torch.Tensor, ctx: StageContext | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._after:
                x = self.non_local[self._after[i]](x)
        return x


def _plain_call(module: nn.Module, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    return module(x)


class InsertedAfter(nn.Module):
    """A stage followed by one inserted module: ``call(module, stage(x), ctx)``.

    Args:
        stage: the stage (possibly already followed by other modules).
        attr: attribute name of ``module``.
        module: the inserted module.
        call: how it is called (see :class:`Insertion`).
    """

    def __init__(self, stage: nn.Module, attr: str, module: nn.Module,
                 call: Callable[[nn.Module, torch.Tensor, StageContext], torch.Tensor] | None
                 ) -> None:
        super().__init__()
        self.stage = stage
        self.attr = attr
        setattr(self, attr, module)
        self._call = call or _plain_call

    def forward(self, x: torch.Tensor, ctx: StageContext | None = None) -> torch.Tensor:
        """(B, C_in, H, W) -> the module's output on the stage's."""
        if ctx is None:
            ctx = StageContext(input=x)
        return self._call(getattr(self, self.attr), self.stage(x, ctx), ctx)


def run_stages(stages: nn.Sequential, x: torch.Tensor, ctx: StageContext) -> torch.Tensor:
    """Run ``stages`` in order, keeping each one's output in ``ctx.taps``."""
    for name, stage in stages.named_children():
        ctx.input = x
        x = stage(x, ctx) if isinstance(stage, Stage | InsertedAfter) else stage(x)
        ctx.taps[name] = x
    return x


def build_stages(cfg: CfgNode, backbone: Backbone) -> dict[str, nn.Module]:
    """The five STAGES of ``backbone`` with every registered insertion's modules;
    stages after MODEL.LAST_STAGE are identities.

    Raises:
        UserError: more modules asked inside a stage than it has blocks (from the
            insertions' own checks too).
    """
    backbone.stem.lr_group = "backbone"
    stages: dict[str, nn.Module] = {"stem": backbone.stem}
    specs = sorted(INSERTIONS.items(), key=lambda item: item[1].order)
    for i, blocks in enumerate(backbone.layers, start=1):
        name = f"layer{i}"
        if i > cfg.MODEL.LAST_STAGE:
            stages[name] = nn.Identity()
            continue
        inside: list[nn.Module] = []
        after: list[tuple[str, Insertion, nn.Module]] = []
        for key, spec in specs:
            built = spec.build(cfg, i, backbone)
            if built is None:
                continue
            modules = built if isinstance(built, list) else [built]
            for module in modules:
                module.lr_group = spec.lr_group
            if spec.inside:
                inside += modules
            else:
                after.append((key, spec, modules[0]))
        if len(inside) > len(blocks):
            raise UserError(f"{len(inside)} modules asked inside {name}, which has "
                            f"{len(blocks)} blocks")
        stage: nn.Module = Stage(blocks, inside)
        for key, spec, module in after:
            stage = InsertedAfter(stage, spec.attr or key, module, spec.call)
        stages[name] = stage
    return stages


def feature_width(cfg: CfgNode, backbone: Backbone) -> int:
    """Channels of the last stage used (MODEL.LAST_STAGE)."""
    return backbone.channels[cfg.MODEL.LAST_STAGE]
