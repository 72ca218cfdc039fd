"""The five stages of the network: a backbone's stages with the modules inserted in them.

Inserted modules (the ``INSERTED`` types) sit inside the stages, so they follow
``MODEL.SHARED_FROM`` like the backbone does (one copy per modality stream in a
modality-specific stage):

- non-local blocks after the last blocks of a stage (AGW);
- an MFA block after a stage, fed the stage's input and output (DEEN);
- the diverse embedding expansion after a shared stage (DEEN), which stacks
  its expanded embeddings on the batch axis: the later stages see
  ``(1 + branches)`` times the batch.
"""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from layers.dee import DiverseEmbeddingExpansion
from layers.mfa import MFA
from layers.non_local import NonLocalBlock
from modeling.backbone import Backbone
from utils.errors import UserError

# Modules added to a backbone; TRAIN.INSERTED_LR sets their learning rate.
INSERTED = (NonLocalBlock, MFA, DiverseEmbeddingExpansion)


class Stage(nn.Module):
    """A backbone stage (``blocks``) with non-local blocks after some of its blocks.

    Args:
        blocks: the stage's blocks (e.g. torchvision ``layerN``).
        non_local: the non-local blocks, placed after the last ``len(non_local)``
            blocks, one each (AGW's placement).
    """

    def __init__(self, blocks: nn.Sequential, non_local: list[NonLocalBlock]) -> None:
        super().__init__()
        self.blocks = blocks
        self.non_local = nn.ModuleList(non_local)
        first = len(blocks) - len(non_local)
        self._after = {first + i: i for i in range(len(non_local))}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C_out, H', W')."""
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self._after:
                x = self.non_local[self._after[i]](x)
        return x


class AggregatedStage(nn.Module):
    """A stage followed by an MFA block: ``mfa(stage(x), x)``.

    Args:
        stage: (B, low, sH, sW) -> (B, high, H, W).
        mfa: the block aggregating the stage's output with its input.
    """

    def __init__(self, stage: nn.Module, mfa: MFA) -> None:
        super().__init__()
        self.stage, self.mfa = stage, mfa

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, low, sH, sW) -> (B, high, H, W)."""
        return self.mfa(self.stage(x), x)


class ExpandedStage(nn.Module):
    """A stage followed by the diverse embedding expansion: (B, ...) -> (views * B, ...)."""

    def __init__(self, stage: nn.Module, dee: DiverseEmbeddingExpansion) -> None:
        super().__init__()
        self.stage, self.dee = stage, dee

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (views * B, C, H', W'): [original, branch 1, branch 2, ...]."""
        return self.dee(self.stage(x))


def build_stages(cfg: CfgNode, backbone: Backbone) -> dict[str, nn.Module]:
    """The five STAGES of ``backbone`` with MODEL.NON_LOCAL_BLOCKS, MODEL.MFA and the
    expansion (MODEL.DEE_BRANCHES after MODEL.DEE_AFTER) inserted; stages after
    MODEL.LAST_STAGE are identities.

    Raises:
        UserError: more non-local blocks asked for a stage than it has blocks, or an
            expansion whose width does not split into its four dilated branches.
    """
    m = cfg.MODEL
    counts = tuple(m.NON_LOCAL_BLOCKS)
    stages: dict[str, nn.Module] = {"stem": backbone.stem}
    for i, (blocks, count) in enumerate(zip(backbone.layers, counts), start=1):
        name = f"layer{i}"
        if i > m.LAST_STAGE:
            stages[name] = nn.Identity()
            continue
        if count > len(blocks):
            raise UserError(f"MODEL.NON_LOCAL_BLOCKS = {', '.join(map(str, counts))} asks for "
                            f"{count} blocks in {name}, which has {len(blocks)} blocks")
        width = backbone.channels[i]
        stage: nn.Module = Stage(blocks, [NonLocalBlock(width, m.NON_LOCAL_REDUCTION,
                                                        m.NON_LOCAL_INNER)
                                          for _ in range(count)])
        if m.MFA[i - 1]:
            stage = AggregatedStage(stage, MFA(width, backbone.channels[i - 1],
                                               backbone.strides[i], m.MFA_SOFTMAX))
        if m.DEE_BRANCHES and i == m.DEE_AFTER:
            if width % 4:
                raise UserError(f"MODEL.DEE_AFTER = {i}: the expansion splits {name}'s "
                                f"{width} channels in four; they must be a multiple of 4")
            stage = ExpandedStage(stage, DiverseEmbeddingExpansion(width, m.DEE_BRANCHES))
        stages[name] = stage
    return stages


def feature_width(cfg: CfgNode, backbone: Backbone) -> int:
    """Channels of the last stage used (MODEL.LAST_STAGE)."""
    return backbone.channels[cfg.MODEL.LAST_STAGE]
