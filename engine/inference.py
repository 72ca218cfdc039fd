"""Feature extraction for evaluation."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from data.base import ImageRecord
from data.build import make_test_loader
from engine.runtime import amp_dtype
from utils.errors import UserError


def _autocast(device: torch.device, enabled: bool, choice: str
              ) -> contextlib.AbstractContextManager:
    if device.type != "cuda" or not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda", dtype=amp_dtype(choice))


def extract_features(model: nn.Module, loader: Iterable[dict[str, torch.Tensor]],
                     num_images: int, device: torch.device, flip: bool = False,
                     amp: bool = True, channels_last: bool = True,
                     amp_type: str = "auto") -> torch.Tensor:
    """Eval-mode features of every image a test loader yields.

    Runs under ``torch.inference_mode()``; on CUDA with autocast of type
    ``amp_type`` (a TRAIN.AMP_DTYPE value) when ``amp`` and channels_last
    inputs when ``channels_last``. The model's training flag is restored afterwards.

    Args:
        model: returns (B, D) features from ``model(img, modality)`` in eval mode.
        loader: yields dicts with ``img`` (B, 3, H, W), ``modality`` (B,) and
            ``index`` (B,) (position of the image in its record list).
        num_images: number of images (rows of the output).
        device: where the model and the features live.
        flip: add the feature of each image's horizontal mirror to its own, as CAJ's and
            DEEN's test code do (DEEN adds the normalised parts, CAJ renormalises the sum):
            rankings are those of the mean, raw features twice the mean.
        amp: autocast on CUDA (TEST.AMP); off = fp32 features.

    Returns:
        (num_images, D) float32 features on ``device``, row i = image index i.
    """
    was_training = model.training
    model.eval()
    feats: torch.Tensor | None = None
    seen = torch.zeros(num_images, dtype=torch.bool)
    try:
        with torch.inference_mode(), _autocast(device, amp, amp_type):
            for batch in loader:
                img = batch["img"].to(device, non_blocking=True)
                if channels_last and device.type == "cuda":
                    img = img.contiguous(memory_format=torch.channels_last)
                modality = batch["modality"].to(device, non_blocking=True)
                out = model(img, modality).float()
                if flip:
                    out = out + model(torch.flip(img, dims=[3]), modality).float()
                if feats is None:
                    feats = torch.empty((num_images, out.shape[1]), dtype=torch.float32,
                                        device=device)
                index = batch["index"].long()
                feats[index.to(device)] = out
                seen[index] = True
    finally:
        model.train(was_training)
    if feats is None or not bool(seen.all()):
        missing = int((~seen).sum())
        raise RuntimeError(f"the test loader yielded no feature for {missing} of "
                           f"{num_images} images")
    bad = int((~torch.isfinite(feats).all(dim=1)).sum())
    if bad:
        # Untrained or barely trained networks overflow in eval mode (BN statistics that
        # have not settled); a diverged run does too. Either way no ranking is possible.
        raise UserError(f"the model gives non-finite features (inf or NaN) for {bad} of "
                        f"{num_images} test images: it overflows in eval mode, as a network "
                        "trained for a few steps from random weights or a diverged run does")
    return feats


def extract_record_features(cfg: CfgNode, model: nn.Module, records: Sequence[ImageRecord],
                            device: torch.device, name: str = "test") -> torch.Tensor:
    """Features of ``records`` through ``data.build.make_test_loader``.

    TEST.FLIP applies; on CUDA TEST.AMP (autocast of type TRAIN.AMP_DTYPE; fp32 by default,
    whatever the training used) and TRAIN.CHANNELS_LAST.
    ``name`` labels the record list (decoded-cache file name, messages).

    Returns:
        (len(records), D) float32 features on ``device``.
    """
    loader = make_test_loader(cfg, list(records), split=name)
    return extract_features(model, loader, len(records), device, flip=cfg.TEST.FLIP,
                            amp=cfg.TEST.AMP, channels_last=cfg.TRAIN.CHANNELS_LAST,
                            amp_type=cfg.TRAIN.AMP_DTYPE)
