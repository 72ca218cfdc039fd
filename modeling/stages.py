"""The five stages of the network: a backbone's stages with the modules inserted in them."""
from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from layers.non_local import NonLocalBlock
from modeling.backbone import Backbone
from utils.errors import UserError


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


def build_stages(cfg: CfgNode, backbone: Backbone) -> dict[str, nn.Module]:
    """The five STAGES of ``backbone`` with MODEL.NON_LOCAL_BLOCKS inserted.

    Raises:
        UserError: more non-local blocks asked for a stage than it has blocks.
    """
    counts = tuple(cfg.MODEL.NON_LOCAL_BLOCKS)
    stages: dict[str, nn.Module] = {"stem": backbone.stem}
    for i, (blocks, count) in enumerate(zip(backbone.layers, counts)):
        name = f"layer{i + 1}"
        if count > len(blocks):
            raise UserError(f"MODEL.NON_LOCAL_BLOCKS = {', '.join(map(str, counts))} asks for "
                            f"{count} blocks in {name}, which has {len(blocks)} blocks")
        stages[name] = Stage(blocks, [NonLocalBlock(backbone.channels[i + 1],
                                                    cfg.MODEL.NON_LOCAL_REDUCTION)
                                      for _ in range(count)])
    return stages
