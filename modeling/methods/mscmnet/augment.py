"""MSCMNet's four augmentation pipelines, one per stream (``build_transforms.py``).

Every stream shares pad + crop, flip, normalisation and random erasing; what
differs is one pixel operation on the uint8 image and one channel operation on
the normalised tensor (``STREAMS``):

=============  ====================================  ==================================
stream         pixel operation (uint8, H x W x 3)    channel operation (normalised)
=============  ====================================  ==================================
V1 (main)      RandomGrayscale(0.5)                  none
V2 (aux)       none                                  ChannelExchange = ``exchange``
I1 (main)      none                                  modified ChannelAdapGray
I2 (aux)       ColorJitter(brightness=0.5)           ChannelT(0.5)
=============  ====================================  ==================================

The published pipelines apply the pixel operation before Pad + RandomCrop +
flip; both pixel operations act on each pixel alone and keep black black, so
they commute with the zero padding, the crop and the flip.

A channel operation is a 3x3 channel-mixing matrix M, applied as
``out[o] = sum_c M[o, c] * t[c]`` (``apply_channel_matrix``); a rule draws it
from the sample's Generator, ``rule(rng, prob) -> M or None`` (None = identity).
``matrix_rule`` turns a rule of ``data.transforms.CHANNEL_RULES`` (which draws
a code: -1 none, 0..2 copy R, G or B, 3 gray) into one drawing the code's matrix
with the same draws.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from PIL import Image, ImageEnhance

from utils.constants import INFRARED, VISIBLE

# Luminance weights of the gray channel of the normalised tensor (channel_aug.py:76-79).
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)
# The channel codes of data.transforms: none, and gray (0..2 copy R, G or B).
NO_CHANNEL, GRAY = -1, 3
# Published probabilities: RandomGrayscale, ColorJitter's brightness range, the
# modified ChannelAdapGray's green copy and gray, ChannelT.
GRAY_PROB, BRIGHTNESS, GREEN_PROB, ADAPTIVE_GRAY_PROB, SCALE_PROB = 0.5, 0.5, 0.5, 0.5, 0.5
# ChannelT multiplies each channel by 2 * U(0.01, 0.5) (channel_aug.py:25-31).
SCALE_RANGE = (0.01, 0.5)
GREEN = 1

ChannelMatrix = np.ndarray  # (3, 3) float32
ChannelRule = Callable[[np.random.Generator, float], "ChannelMatrix | None"]


def copy_matrix(channel: int) -> ChannelMatrix:
    """M copying channel 0, 1 or 2 (R, G, B) into all three."""
    m = np.zeros((3, 3), dtype=np.float32)
    m[:, channel] = 1.0
    return m


def gray_matrix() -> ChannelMatrix:
    """M writing the luminance gray of the three channels into all three."""
    return np.tile(np.array(GRAY_WEIGHTS, dtype=np.float32), (3, 1))


def code_matrix(code: int) -> ChannelMatrix | None:
    """The matrix of a channel code of ``data.transforms``: None for -1, a copy for
    0..2, gray for 3."""
    if code == NO_CHANNEL:
        return None
    if code == GRAY:
        return gray_matrix()
    if code in (0, 1, 2):
        return copy_matrix(code)
    raise ValueError(f"unknown channel code {code}: expected -1, 0, 1, 2 or 3")


def _draw_code_matrix(code_rule: Callable[[np.random.Generator, float], int],
                      rng: np.random.Generator, prob: float) -> ChannelMatrix | None:
    return code_matrix(code_rule(rng, prob))


def matrix_rule(code_rule: Callable[[np.random.Generator, float], int]) -> ChannelRule:
    """A code rule ``(rng, prob) -> code`` as a matrix rule with the same draws
    (picklable when ``code_rule`` is a module-level function)."""
    return partial(_draw_code_matrix, code_rule)


def green_or_gray(rng: np.random.Generator, prob: float = 0.0) -> ChannelMatrix | None:
    """MSCMNet's modified ChannelAdapGray (channel_aug.py:38-82; ``prob`` unused).

    1/2: copy G into R and B; otherwise 1/2 luminance gray, else unchanged (1/4 each).
    """
    if rng.random() < GREEN_PROB:
        return copy_matrix(GREEN)
    return gray_matrix() if rng.random() < ADAPTIVE_GRAY_PROB else None


def channel_scale(rng: np.random.Generator, prob: float = 0.0) -> ChannelMatrix | None:
    """ChannelT(0.5) (channel_aug.py:10-36; ``prob`` unused): with probability 0.5 each
    channel is multiplied by its own 2 * U(0.01, 0.5), in [0.02, 1.0)."""
    if rng.random() >= SCALE_PROB:
        return None
    return np.diag(2.0 * rng.uniform(*SCALE_RANGE, size=3)).astype(np.float32)


# MSCMNet's channel rules beside data.transforms.CHANNEL_RULES (which holds ``exchange``).
MATRIX_RULES: dict[str, ChannelRule] = {"green_or_gray": green_or_gray,
                                        "channel_scale": channel_scale}


def apply_channel_matrix(t: torch.Tensor, m: torch.Tensor | np.ndarray | None) -> torch.Tensor:
    """``out[..., o, :, :] = sum_c M[..., o, c] * t[..., c, :, :]``, summed in channel order.

    Args:
        t: (3, H, W) or (B, 3, H, W) normalised float tensor.
        m: (3, 3) or (B, 3, 3) matrix; None = identity (``t`` returned as is).

    Returns:
        a new tensor of the shape of ``t`` (``t`` itself when ``m`` is None).
    """
    if m is None:
        return t
    m = torch.as_tensor(m, dtype=t.dtype, device=t.device)
    terms = [m[..., :, c, None, None] * t[..., c, None, :, :] for c in range(3)]
    return terms[0] + terms[1] + terms[2]


def grayscale(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> PIL's ITU-R 601-2 luma in all three channels (as torchvision's
    RandomGrayscale and ``data.transforms.TrainTransform.grayscale``)."""
    return np.asarray(Image.fromarray(np.ascontiguousarray(img)).convert("L").convert("RGB"))


def random_grayscale(img: np.ndarray, rng: np.random.Generator,
                     prob: float = GRAY_PROB) -> np.ndarray:
    """RandomGrayscale(prob) on an (H, W, 3) uint8 image."""
    return grayscale(img) if rng.random() < prob else img


def random_brightness(img: np.ndarray, rng: np.random.Generator,
                      strength: float = BRIGHTNESS) -> np.ndarray:
    """ColorJitter(brightness=strength) on an (H, W, 3) uint8 image: PIL's brightness
    enhancement (``img * f``, truncated, clipped at 255) with f ~ U(1 - s, 1 + s)."""
    factor = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength)
    out = ImageEnhance.Brightness(Image.fromarray(np.ascontiguousarray(img))).enhance(factor)
    return np.asarray(out)


@dataclass(frozen=True)
class StreamAugmentation:
    """What one stream adds to the shared augmentations.

    Attributes:
        name: the published stream (V1, V2, I1, I2).
        pixel: ``(img, rng) -> img`` on the (H, W, 3) uint8 image, or None.
        channel: name of the channel rule (``data.transforms.CHANNEL_RULES`` or
            ``MATRIX_RULES``).
    """

    name: str
    pixel: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None
    channel: str


# (modality, part) -> the stream's pipeline; parts as data.transforms.PART_PLAIN / PART_COPY.
STREAMS = {
    (VISIBLE, 0): StreamAugmentation("V1", random_grayscale, "none"),
    (VISIBLE, 1): StreamAugmentation("V2", None, "exchange"),
    (INFRARED, 0): StreamAugmentation("I1", None, "green_or_gray"),
    (INFRARED, 1): StreamAugmentation("I2", random_brightness, "channel_scale"),
}
