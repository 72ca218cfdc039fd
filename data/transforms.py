"""Image decoding and the train / test transforms.

Every image is first decoded to RGB and resized to the split's size
(``load_image``): that is the step the decoded cache stores. The random
training operations then run on the uint8 array with a ``numpy`` Generator the
caller seeds per sample, so cached and decoded loading, any number of workers
and a resumed run all produce the same tensors.

Each transform works in two halves. ``sample`` runs in the loader's workers:
the uint8 operations (crop, flip, grayscale) and the draw of the parameters of
the float operations (the erasing box and the channel choice). ``finish`` runs
once per batch, where the batch arrives (in the main process, or on the GPU):
normalisation, random erasing and channel augmentation. Workers thus pass
uint8 images, a quarter of the bytes of float ones; ``__call__`` chains both
halves for one image.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from yacs.config import CfgNode

from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.registry import Registry

# CAJ's gray channel on the normalised tensor.
_GRAY = (0.2989, 0.5870, 0.1140)

# Parts of a training batch: the sampled image, or its extra copy (DATA.VISIBLE_COPY,
# DATA.INFRARED_COPY).
PART_PLAIN, PART_COPY = 0, 1

# PIL filters of DATA.RESIZE (LANCZOS is the former ANTIALIAS).
RESIZE_FILTERS: Registry = Registry("DATA.RESIZE", "resize filter")
RESIZE_FILTERS.update({"bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS})

# Channel choices passed from ``sample`` to ``finish``: R, G, B copied to all channels, gray.
NO_CHANNEL, GRAY = -1, 3


def _channel_none(rng: np.random.Generator, prob: float) -> int:
    return NO_CHANNEL


def _channel_random(rng: np.random.Generator, prob: float) -> int:
    """With probability ``prob`` one of R, G, B or gray, uniformly."""
    return int(rng.integers(0, 4)) if rng.random() < prob else NO_CHANNEL


def _channel_exchange(rng: np.random.Generator, prob: float) -> int:
    """CAJ's ChannelExchange(gray=2): always one of R, G, B, 1/3 each (its gray is unreachable)."""
    return int(rng.integers(0, 3))


def _channel_adaptive_gray(rng: np.random.Generator, prob: float) -> int:
    """CAJ's ChannelAdapGray(0.5): R, G, B 1/4 each; the last quarter split gray / unchanged."""
    choice = int(rng.integers(0, 4))
    if choice == GRAY and rng.random() < 0.5:
        return NO_CHANNEL
    return choice


# Channel choice of a rule that drew a 3x3 mixing matrix (``MatrixRule``).
MATRIX = 4


class MatrixRule:
    """A channel rule drawing a 3x3 channel-mixing matrix M instead of a choice:
    ``out[o] = sum_c M[o, c] * t[c]`` on the normalised tensor.

    Args:
        draw: ``draw(rng, prob)`` -> (3, 3) array or None (unchanged); a module-level
            function, so that the transform stays picklable.
    """

    def __init__(self, draw: Callable[[np.random.Generator, float], np.ndarray | None]
                 ) -> None:
        self.draw = draw

    def __call__(self, rng: np.random.Generator, prob: float) -> np.ndarray | None:
        return self.draw(rng, prob)


# DATA.CHANNEL_AUG_{VISIBLE,COPY,INFRARED,INFRARED_COPY} -> draw of the channel choice
# (or a MatrixRule); only ``random`` uses DATA.CHANNEL_AUG_PROB. Module-level functions
# keep the transform picklable.
CHANNEL_RULES: Registry = Registry("DATA.CHANNEL_AUG_*", "channel rule", config_keys=(
    "DATA.CHANNEL_AUG_VISIBLE", "DATA.CHANNEL_AUG_COPY", "DATA.CHANNEL_AUG_INFRARED",
    "DATA.CHANNEL_AUG_INFRARED_COPY"))
CHANNEL_RULES.update({"none": _channel_none, "random": _channel_random,
                      "exchange": _channel_exchange, "adaptive_gray": _channel_adaptive_gray})

# DATA.PIXEL_AUG_* -> ``op(img, rng)`` on the resized (H, W, 3) uint8 image before pad +
# crop, or None (``none``: no draw). Methods register theirs (MSCMNet's grayscale and
# brightness).
PIXEL_RULES: Registry = Registry("DATA.PIXEL_AUG_*", "pixel rule", config_keys=(
    "DATA.PIXEL_AUG_VISIBLE", "DATA.PIXEL_AUG_COPY", "DATA.PIXEL_AUG_INFRARED",
    "DATA.PIXEL_AUG_INFRARED_COPY"))
PIXEL_RULES["none"] = None


def mix_channels(t: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(3, H, W) tensor, (3, 3) matrix -> ``out[o] = sum_c m[o, c] t[c]``, summed in
    channel order."""
    m = m.to(t.dtype)
    return m[:, 0, None, None] * t[0] + m[:, 1, None, None] * t[1] + m[:, 2, None, None] * t[2]


def load_image(path: str, size: tuple[int, int], resize: str = "bilinear") -> np.ndarray:
    """Decode ``path`` as RGB (single-channel images replicated) and resize.

    Args:
        path: image file.
        size: (height, width).
        resize: filter name, a key of ``RESIZE_FILTERS``.

    Returns:
        (H, W, 3) uint8 array.

    Raises:
        UserError: missing or undecodable file.
    """
    h, w = size
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (w, h):
                im = im.resize((w, h), RESIZE_FILTERS[resize])
            return np.asarray(im)
    except FileNotFoundError:
        raise UserError(f"image {path} not found") from None
    except Exception as exc:  # PIL raises many types for a broken file
        raise UserError(f"image {path} does not decode as an image "
                        f"({type(exc).__name__}: {exc})") from None


def to_chw(img: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 array (any strides) -> contiguous (3, H, W) uint8 tensor."""
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    if not chw.flags.writeable:  # torch.from_numpy warns on read-only arrays
        chw = chw.copy()
    return torch.from_numpy(chw)


class Normalize:
    """(..., 3, H, W) uint8 -> float32 normalised with the config's mean and std (any device)."""

    def __init__(self, cfg: CfgNode) -> None:
        mean = torch.tensor(cfg.DATA.NORMALIZATION_MEAN, dtype=torch.float32) * 255
        std = torch.tensor(cfg.DATA.NORMALIZATION_STD, dtype=torch.float32) * 255
        self.mean = mean.view(3, 1, 1)
        self.inv_std = (1.0 / std).view(3, 1, 1)

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        mean, inv_std = self.mean.to(imgs.device), self.inv_std.to(imgs.device)
        return imgs.float().sub_(mean).mul_(inv_std)


class EvalTransform:
    """Test transform: the image is already resized; normalise. (Test-time flip is done
    on the batch by the feature extraction, ``engine.inference``.)

    Args:
        cfg: the configuration.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.normalize = Normalize(cfg)

    def sample(self, img: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 array -> (3, H, W) uint8 tensor."""
        return to_chw(img)

    def finish(self, imgs: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) uint8 -> normalised float."""
        return self.normalize(imgs)

    def __call__(self, img: np.ndarray) -> torch.Tensor:
        """(H, W, 3) uint8 -> (3, H, W) float."""
        return self.finish(self.sample(img))


class TrainTransform:
    """Training augmentations, in order: pad + random crop, horizontal flip, random
    grayscale (probability per modality), normalisation, random erasing, channel
    augmentation.

    Random erasing fills its box with RE_FILL in normalised space (0 = the
    dataset mean colour). Channel augmentation copies one of R, G, B or the gray
    value of the normalised tensor to all three channels, by the rule
    (``CHANNEL_RULES``) of the image's part: visible, visible copy or infrared.
    """

    def __init__(self, cfg: CfgNode) -> None:
        d = cfg.DATA
        self.size = tuple(d.SIZE_TRAIN)
        self.padding = d.PADDING
        self.flip_prob = d.FLIP_PROB
        self.gray_prob = {VISIBLE: d.GRAY_PROB_VISIBLE, INFRARED: d.GRAY_PROB_INFRARED}
        self.channel_prob = d.CHANNEL_AUG_PROB
        self.re_prob = d.RE_PROB
        if len(d.RE_AREA) != 2 or not 0 < d.RE_AREA[0] <= d.RE_AREA[1] <= 1:
            raise UserError(f"DATA.RE_AREA = {d.RE_AREA} must be two fractions 0 < min <= max <= 1")
        if not 0 < d.RE_MIN_RATIO <= 1:
            raise UserError(f"DATA.RE_MIN_RATIO = {d.RE_MIN_RATIO} must be in (0, 1]")
        self.re_area = tuple(d.RE_AREA)
        self.re_uniform = d.RE_ASPECT == "uniform"
        r = d.RE_MIN_RATIO
        self.re_ratio = (r, 1 / r) if self.re_uniform else (math.log(r), -math.log(r))
        self.re_tries = d.RE_TRIES
        self.re_fill = torch.tensor(d.RE_FILL, dtype=torch.float32).view(3, 1, 1)
        names = {(VISIBLE, PART_PLAIN): d.CHANNEL_AUG_VISIBLE,
                 (VISIBLE, PART_COPY): d.CHANNEL_AUG_COPY,
                 (INFRARED, PART_PLAIN): d.CHANNEL_AUG_INFRARED}
        pixels = {(VISIBLE, PART_PLAIN): d.PIXEL_AUG_VISIBLE,
                  (VISIBLE, PART_COPY): d.PIXEL_AUG_COPY,
                  (INFRARED, PART_PLAIN): d.PIXEL_AUG_INFRARED}
        if d.INFRARED_COPY:
            names[(INFRARED, PART_COPY)] = d.CHANNEL_AUG_INFRARED_COPY
            pixels[(INFRARED, PART_COPY)] = d.PIXEL_AUG_INFRARED_COPY
        self.channel_rules = {part: CHANNEL_RULES[name] for part, name in names.items()}
        self.pixel_rules = {part: PIXEL_RULES[name] for part, name in pixels.items()}
        # Matrix rules widen the parameters by the 9 matrix entries (as float64, which
        # holds the integers and the float32 entries exactly).
        self.matrices = any(isinstance(r, MatrixRule) for r in self.channel_rules.values())
        self.normalize = Normalize(cfg)

    def pad_crop(self, img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Zero-pad by PADDING on every side and crop a random window of the original size."""
        p = self.padding
        if p == 0:
            return img
        h, w = img.shape[:2]
        dy, dx = (int(v) - p for v in rng.integers(0, 2 * p + 1, size=2))
        out = np.zeros(img.shape, dtype=img.dtype)
        # Source rows [dy, dy + h) of the unpadded image land on out rows [0, h).
        sy0, sy1 = max(dy, 0), min(dy + h, h)
        sx0, sx1 = max(dx, 0), min(dx + w, w)
        out[sy0 - dy:sy1 - dy, sx0 - dx:sx1 - dx] = img[sy0:sy1, sx0:sx1]
        return out

    @staticmethod
    def grayscale(img: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> the same shape with three equal luma channels.

        PIL's ITU-R 601-2 luma, the grayscale of torchvision's RandomGrayscale.
        """
        gray = Image.fromarray(np.ascontiguousarray(img)).convert("L").convert("RGB")
        return np.asarray(gray)

    def erase_box(self, h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
        """(y, x, height, width) of a box of area RE_AREA and aspect (height / width) in
        [RE_MIN_RATIO, 1/RE_MIN_RATIO]; height 0 when RE_TRIES tries found none that fits.

        ``log`` aspects need a box of at least one pixel each way; ``uniform``
        ones follow CAJ / DEEN, where a box that rounds to zero rows or columns
        is accepted and erases nothing.
        """
        least = 0 if self.re_uniform else 1
        for _ in range(self.re_tries):
            area = h * w * rng.uniform(*self.re_area)
            ratio = rng.uniform(*self.re_ratio)
            if not self.re_uniform:
                ratio = math.exp(ratio)
            eh, ew = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if least <= eh < h and least <= ew < w:
                return int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1)), eh, ew
        return 0, 0, 0, 0

    def sample(self, img: np.ndarray, modality: int, rng: np.random.Generator,
               part: int = PART_PLAIN) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 half, run by the workers.

        Args:
            img: (H, W, 3) uint8, already resized to SIZE_TRAIN.
            modality: VISIBLE or INFRARED.
            rng: the sample's random generator (the only source of randomness).
            part: PART_PLAIN, or PART_COPY for the extra copy of an image; selects
                the pixel and channel rules.

        Returns:
            (3, H, W) uint8 tensor and the (5,) long parameters of ``finish``: the
            erasing box (y, x, height, width; height 0 = none) and the channel
            choice (0..2 = R, G, B, 3 = gray, -1 = none, 4 = matrix); with a matrix
            rule configured, (14,) float64: those and the 9 entries of the matrix
            (zeros unless the choice is 4).
        """
        if img.shape[:2] != self.size:
            raise ValueError(f"expected a {self.size} image, got {img.shape[:2]}")
        rule = self.channel_rules.get((modality, part))
        if rule is None:
            raise ValueError(f"no channel rule for modality {modality}, part {part}")
        pixel = self.pixel_rules[(modality, part)]
        if pixel is not None:  # before pad + crop, as the published pipelines
            img = pixel(img, rng)
        img = self.pad_crop(img, rng)
        if rng.random() < self.flip_prob:
            img = img[:, ::-1]
        if rng.random() < self.gray_prob[modality]:
            img = self.grayscale(img)
        box = (0, 0, 0, 0)
        if rng.random() < self.re_prob:
            box = self.erase_box(*self.size, rng)
        channel = rule(rng, self.channel_prob)
        if not self.matrices:
            return to_chw(img), torch.tensor([*box, channel], dtype=torch.long)
        matrix = np.zeros(9)
        if isinstance(channel, np.ndarray):
            matrix, channel = channel.reshape(9), MATRIX
        elif channel is None:
            channel = NO_CHANNEL
        return to_chw(img), torch.tensor([*box, channel, *matrix], dtype=torch.float64)

    def finish(self, imgs: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
        """The float half, once per batch: normalise, erase, channel augmentation.

        Args:
            imgs: (B, 3, H, W) uint8 from ``sample``, on any device.
            params: (B, 5) long or (B, 14) float64 from ``sample``.

        Returns:
            (B, 3, H, W) float32 on the device of ``imgs``.
        """
        t = self.normalize(imgs)
        fill = self.re_fill.to(t.device)
        matrices = params[:, 5:].float().view(-1, 3, 3).to(t.device)
        for i, row in enumerate(params[:, :5].long().tolist()):
            y, x, h, w, choice = row
            if h:
                t[i, :, y:y + h, x:x + w] = fill
            if choice == NO_CHANNEL:
                continue
            if choice == MATRIX:
                t[i] = mix_channels(t[i], matrices[i])
                continue
            if choice < GRAY:
                src = t[i, choice].clone()
            else:
                src = _GRAY[0] * t[i, 0] + _GRAY[1] * t[i, 1] + _GRAY[2] * t[i, 2]
            t[i] = src
        return t

    def __call__(self, img: np.ndarray, modality: int, rng: np.random.Generator,
                 part: int = PART_PLAIN) -> torch.Tensor:
        """Augment one image: (H, W, 3) uint8 -> (3, H, W) float32 (see ``sample``)."""
        chw, params = self.sample(img, modality, rng, part)
        return self.finish(chw[None], params[None])[0]
