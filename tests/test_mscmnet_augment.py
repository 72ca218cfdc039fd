"""MSCMNet's stream augmentations: seeded rules, channel matrices, pixel operations."""
from __future__ import annotations

import math
import pickle
from collections import Counter

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from PIL import Image

import data.transforms as data_transforms
from data.transforms import (
    CHANNEL_RULES,
    PART_COPY,
    PART_PLAIN,
    Normalize,
    TrainTransform,
    to_chw,
)
from modeling.methods.mscmnet.augment import (
    GRAY,
    MATRIX_RULES,
    NO_CHANNEL,
    STREAMS,
    apply_channel_matrix,
    channel_scale,
    code_matrix,
    green_or_gray,
    matrix_rule,
    random_brightness,
    random_grayscale,
)
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE

pytestmark = pytest.mark.usefixtures("one_thread")

N = 4000


def within_binomial(count: int, n: int, p: float) -> bool:
    """|count / n - p| within 4 standard deviations of a binomial proportion."""
    return abs(count / n - p) <= 4 * math.sqrt(p * (1 - p) / n)


def outcome(m) -> str:
    """Name a matrix: none, a copy of R, G or B into all channels, gray, or other."""
    if m is None:
        return "none"
    for name, c in zip("RGB", range(3)):
        copy = np.zeros((3, 3))
        copy[:, c] = 1  # every output channel reads input channel c
        if np.array_equal(m, copy):
            return name
    if np.allclose(m, np.array([[0.2989, 0.5870, 0.1140]] * 3)):
        return "gray"
    return "other"


def test_codes_match_data_transforms():
    assert (NO_CHANNEL, GRAY) == (data_transforms.NO_CHANNEL, data_transforms.GRAY)
    assert set(STREAMS) == {(VISIBLE, PART_PLAIN), (VISIBLE, PART_COPY),
                            (INFRARED, PART_PLAIN), (INFRARED, PART_COPY)}
    assert [STREAMS[k].name for k in sorted(STREAMS)] == ["V1", "V2", "I1", "I2"]
    for stream in STREAMS.values():
        assert stream.channel in CHANNEL_RULES or stream.channel in MATRIX_RULES
    assert STREAMS[(VISIBLE, PART_COPY)].channel == "exchange"


@pytest.mark.parametrize("name", sorted(n for n, r in CHANNEL_RULES.items()
                                         if not isinstance(r, data_transforms.MatrixRule)))
def test_existing_rules_keep_their_draws_and_outputs(name):
    cfg = load_config(None, ["DATA.SIZE_TRAIN", "4,2", "DATA.CHANNEL_AUG_PROB", "0.5"])
    transform = TrainTransform(cfg)
    code_rule, rule = CHANNEL_RULES[name], matrix_rule(CHANNEL_RULES[name])
    img = np.random.default_rng(7).integers(0, 256, size=(4, 2, 3), dtype=np.uint8)
    for seed in range(40):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        code, m = code_rule(a, 0.5), rule(b, 0.5)
        assert a.random() == b.random()  # the same number of draws
        params = torch.tensor([[0, 0, 0, 0, code]])
        expected = transform.finish(to_chw(img)[None], params)[0]
        got = apply_channel_matrix(Normalize(cfg)(to_chw(img)), m)
        assert torch.equal(got, expected), (name, seed, code)


def test_exchange_matrix_frequencies():
    rule = matrix_rule(CHANNEL_RULES["exchange"])
    counts = Counter(outcome(rule(np.random.default_rng(s), 0.0)) for s in range(N))
    assert set(counts) == {"R", "G", "B"}
    assert all(within_binomial(counts[c], N, 1 / 3) for c in "RGB")


def test_green_or_gray_frequencies_and_outputs():
    counts = Counter(outcome(green_or_gray(np.random.default_rng(s))) for s in range(N))
    assert set(counts) == {"G", "gray", "none"}
    for name, p in (("G", 1 / 2), ("gray", 1 / 4), ("none", 1 / 4)):
        assert within_binomial(counts[name], N, p), (name, counts)
    x = torch.tensor([[[1.0]], [[-2.0]], [[4.0]]])
    green = next(m for s in range(20) if (m := green_or_gray(np.random.default_rng(s)))
                 is not None and m[0, 0] == 0)
    gray = next(m for s in range(20) if (m := green_or_gray(np.random.default_rng(s)))
                is not None and m[0, 0] != 0)
    assert apply_channel_matrix(x, green).flatten().tolist() == [-2.0, -2.0, -2.0]
    # 0.2989 * 1 + 0.5870 * -2 + 0.1140 * 4 = -0.4191
    assert torch.allclose(apply_channel_matrix(x, gray).flatten(), torch.full((3,), -0.4191))


def test_channel_scale_frequency_range_and_output():
    draws = [channel_scale(np.random.default_rng(s)) for s in range(N)]
    scaled = [m for m in draws if m is not None]
    assert within_binomial(len(scaled), N, 0.5)
    factors = np.stack([np.diag(m) for m in scaled])
    assert all(np.count_nonzero(m - np.diag(np.diag(m))) == 0 for m in scaled)
    assert factors.min() >= 0.02 and factors.max() < 1.0
    # 2 U(0.01, 0.5): mean 0.51, std 0.98 / sqrt(12); channels drawn independently.
    std = 0.98 / math.sqrt(12)
    assert abs(factors.mean(axis=0) - 0.51).max() < 4 * std / math.sqrt(len(scaled))
    assert abs(np.corrcoef(factors.T)[0, 1]) < 0.1
    x = torch.tensor([[[1.0, -1.0]], [[2.0, 0.5]], [[-4.0, 3.0]]])
    m = scaled[0]
    expected = torch.stack([x[c] * float(m[c, c]) for c in range(3)])
    assert torch.equal(apply_channel_matrix(x, m), expected)


def test_batched_matrices_match_per_image():
    t = torch.randn(3, 3, 4, 2)
    scale = next(m for s in range(20) if (m := channel_scale(np.random.default_rng(s))) is not None)
    ms = np.stack([code_matrix(0), code_matrix(GRAY), scale])
    got = apply_channel_matrix(t, ms)
    for i in range(3):
        assert torch.equal(got[i], apply_channel_matrix(t[i], ms[i]))
    assert apply_channel_matrix(t, None) is t
    with pytest.raises(ValueError, match="unknown channel code 5"):
        code_matrix(5)


def test_random_grayscale_is_torchvisions_with_half_probability():
    img = np.random.default_rng(0).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    expected = np.asarray(TF.rgb_to_grayscale(Image.fromarray(img), num_output_channels=3))
    outs = [random_grayscale(img, np.random.default_rng(s)) for s in range(N)]
    gray = [o for o in outs if not np.array_equal(o, img)]
    assert within_binomial(len(gray), N, 0.5)
    assert all(np.array_equal(o, expected) for o in gray)
    assert np.array_equal(expected, TrainTransform.grayscale(img))


class TopRng:
    """``uniform`` at the top of its range."""

    @staticmethod
    def uniform(low: float, high: float) -> float:
        return high


def test_random_brightness_is_torchvisions_color_jitter():
    img = np.random.default_rng(0).integers(0, 256, size=(6, 4, 3), dtype=np.uint8)
    factors = []
    for s in range(200):
        factor = np.random.default_rng(s).uniform(0.5, 1.5)
        expected = np.asarray(TF.adjust_brightness(Image.fromarray(img), factor))
        assert np.array_equal(random_brightness(img, np.random.default_rng(s)), expected)
        factors.append(factor)
    assert min(factors) >= 0.5 and max(factors) < 1.5
    # Factor 1.5: 201 -> 301.5 -> 255, 101 -> 151.5 -> 151, 3 -> 4.5 -> 4 (truncated, clipped).
    small = np.array([[[201, 101, 3]]], dtype=np.uint8)
    assert random_brightness(small, TopRng()).tolist() == [[[255, 151, 4]]]


@pytest.mark.parametrize("op", [lambda img: random_grayscale(img, np.random.default_rng(0), 1.0),
                                lambda img: random_brightness(img, TopRng())])
def test_pixel_operations_commute_with_pad_crop_and_flip(op):
    cfg = load_config(None, ["DATA.SIZE_TRAIN", "8,4", "DATA.PADDING", "3"])
    transform = TrainTransform(cfg)
    img = np.random.default_rng(1).integers(0, 256, size=(8, 4, 3), dtype=np.uint8)
    for seed in range(10):
        before = transform.pad_crop(op(img), np.random.default_rng(seed))[:, ::-1]
        after = op(np.ascontiguousarray(transform.pad_crop(img, np.random.default_rng(seed))
                                        [:, ::-1]))
        assert np.array_equal(before, after), seed


def test_rules_and_streams_pickle():
    for obj in (matrix_rule(CHANNEL_RULES["exchange"]), MATRIX_RULES, STREAMS):
        assert pickle.loads(pickle.dumps(obj)) is not None
    rule = pickle.loads(pickle.dumps(matrix_rule(CHANNEL_RULES["exchange"])))
    assert np.array_equal(rule(np.random.default_rng(3), 0.0),
                          matrix_rule(CHANNEL_RULES["exchange"])(np.random.default_rng(3), 0.0))
