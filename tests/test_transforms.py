"""Each training augmentation does what it says, driven by the sample's Generator."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from data.transforms import EvalTransform, Normalize, TrainTransform, to_chw
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

OFF = ["DATA.FLIP_PROB", "0", "DATA.PADDING", "0", "DATA.RE_PROB", "0",
       "DATA.GRAY_PROB_VISIBLE", "0", "DATA.GRAY_PROB_INFRARED", "0", "DATA.CHANNEL_AUG_PROB", "0"]


def make_cfg(*overrides: str):
    return load_config(None, ["DATA.SIZE_TRAIN", "16,8", "DATA.SIZE_TEST", "16,8", *OFF,
                              *overrides])


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(16, 8, 3), dtype=np.uint8)


def denorm(cfg, t: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(cfg.DATA.NORMALIZATION_MEAN).view(3, 1, 1) * 255
    std = torch.tensor(cfg.DATA.NORMALIZATION_STD).view(3, 1, 1) * 255
    return t * std + mean


def norm(cfg, img: np.ndarray) -> torch.Tensor:
    return Normalize(cfg)(to_chw(img))


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_all_off_is_normalisation_only() -> None:
    cfg = make_cfg()
    img = image()
    out = TrainTransform(cfg)(img, VISIBLE, rng())
    assert out.shape == (3, 16, 8) and out.dtype == torch.float32
    assert torch.allclose(out, norm(cfg, img))
    assert torch.allclose(denorm(cfg, out), torch.from_numpy(img).permute(2, 0, 1).float(),
                          atol=1e-3)


def test_flip_mirrors() -> None:
    cfg = make_cfg("DATA.FLIP_PROB", "1")
    img = image()
    out = TrainTransform(cfg)(img, VISIBLE, rng())
    assert torch.allclose(out, norm(cfg, img[:, ::-1]))


def test_pad_crop_shifts_with_zero_border() -> None:
    cfg = make_cfg("DATA.PADDING", "3")
    t = TrainTransform(cfg)
    img = np.full((16, 8, 3), 200, dtype=np.uint8)
    shifted = 0
    for s in range(20):
        out = t.pad_crop(img, rng(s))
        assert out.shape == img.shape
        zeros = (out == 0).all(axis=2)
        shifted += bool(zeros.any())
        # The non-zero part is one rectangle of the original value.
        assert set(np.unique(out)) <= {0, 200}
    assert shifted > 10


def test_grayscale_per_modality() -> None:
    cfg = make_cfg("DATA.GRAY_PROB_VISIBLE", "1")
    t = TrainTransform(cfg)
    img = image()
    vis = denorm(cfg, t(img, VISIBLE, rng())).round()
    assert torch.equal(vis[0], vis[1]) and torch.equal(vis[0], vis[2])
    expected = np.array(Image.fromarray(img).convert("L"))
    assert torch.equal(vis[0], torch.from_numpy(expected).float())
    ir = t(img, INFRARED, rng())  # infrared probability is 0
    assert torch.allclose(ir, norm(cfg, img))


@pytest.mark.parametrize("modality", [VISIBLE, INFRARED])
def test_channel_augmentation_leaves_three_equal_channels(modality: int) -> None:
    cfg = make_cfg("DATA.CHANNEL_AUG_PROB", "1")
    t = TrainTransform(cfg)
    base = norm(cfg, image())
    choices = set()
    for s in range(40):
        out = t(image(), modality, rng(s))
        assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
        src = [i for i in range(3) if torch.equal(out[0], base[i])]
        choices.add(src[0] if src else "gray")
    assert choices == {0, 1, 2, "gray"}


def test_random_erasing_zeros_one_box() -> None:
    cfg = make_cfg("DATA.RE_PROB", "1", "DATA.RE_AREA", "0.1,0.3")
    t = TrainTransform(cfg)
    img = np.full((16, 8, 3), 255, dtype=np.uint8)  # never 0 after normalisation
    out = t(img, VISIBLE, rng(1))
    erased = (out == 0).all(dim=0)
    ys, xs = torch.nonzero(erased, as_tuple=True)
    assert len(ys) > 0
    box = erased[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    assert box.all() and int(erased.sum()) == box.numel()  # one filled rectangle
    assert 0.05 <= box.numel() / (16 * 8) <= 0.4


def test_same_generator_state_same_output() -> None:
    cfg = make_cfg("DATA.FLIP_PROB", "0.5", "DATA.PADDING", "2", "DATA.RE_PROB", "0.5",
                   "DATA.CHANNEL_AUG_PROB", "0.5", "DATA.GRAY_PROB_INFRARED", "0.5")
    t = TrainTransform(cfg)
    outs = [t(image(), INFRARED, rng(s)) for s in range(10)]
    again = [t(image(), INFRARED, rng(s)) for s in range(10)]
    assert all(torch.equal(a, b) for a, b in zip(outs, again))
    assert len({o.sum().item() for o in outs}) > 1


def test_test_transform_normalises() -> None:
    cfg = make_cfg()
    img = image()
    # Test-time flip is done on the batch by the feature extraction, not here.
    assert torch.allclose(EvalTransform(cfg)(img), norm(cfg, img))


def test_bad_erasing_area() -> None:
    with pytest.raises(UserError, match="DATA.RE_AREA"):
        TrainTransform(make_cfg("DATA.RE_AREA", "0.5,0.2"))
