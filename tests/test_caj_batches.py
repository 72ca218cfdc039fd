"""CAJ's training batches: visible copies, channel rules per part, published erasing, LANCZOS."""
from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data import build_dataset
from data.build import make_test_loader, make_train_loader, sample_seeds
from data.transforms import (
    CHANNEL_RULES,
    PART_COPY,
    PART_PLAIN,
    RESIZE_FILTERS,
    Normalize,
    TrainTransform,
    load_image,
    to_chw,
)
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError
from utils.registry import CONFIG_REGISTRIES

pytestmark = pytest.mark.usefixtures("one_thread")

OFF = ["DATA.FLIP_PROB", "0", "DATA.PADDING", "0", "DATA.RE_PROB", "0",
       "DATA.CHANNEL_AUG_PROB", "0", "DATA.SIZE_TRAIN", "4,2"]
# The published CAJ data settings (besides sizes and batch shape).
CAJ = ["DATA.VISIBLE_COPY", "yes", "DATA.CHANNEL_AUG_VISIBLE", "none",
       "DATA.CHANNEL_AUG_COPY", "exchange", "DATA.CHANNEL_AUG_INFRARED", "adaptive_gray",
       "DATA.RE_PROB", "0.5", "DATA.RE_FILL", "0.4914, 0.4822, 0.4465",
       "DATA.RE_ASPECT", "uniform", "DATA.RE_TRIES", "100", "DATA.RESIZE", "lanczos"]
SMALL = ["DATA.SIZE_TRAIN", "48,24", "DATA.SIZE_TEST", "40,20", "DATA.TRAIN_BATCH_SIZE", "8",
         "DATA.SAMPLE_ID_INSTANCE", "2", "DATA.PADDING", "4", "DATA.NUM_WORKERS", "0",
         "DATA.VERIFY_IMAGES", "no"]
RGB = (200, 100, 30)  # distinct channels, so the output names the rule's choice


def sysu_cfg(root: Path, *overrides: str):
    return load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(root), *SMALL,
                              *overrides])


def train_batches(cfg, epoch: int = 1, start: int = 0) -> list[dict]:
    loader, sampler = make_train_loader(cfg, build_dataset(cfg, verbose=False), verbose=False)
    sampler.set_epoch(epoch)
    sampler.set_start(start)
    return list(loader)


def channel_outcome(cfg, out: torch.Tensor) -> str:
    """Name what the channel rule did to the constant RGB image: R, G, B, gray or none."""
    base = Normalize(cfg)(to_chw(np.full((4, 2, 3), RGB, dtype=np.uint8)))
    if torch.equal(out, base):
        return "none"
    assert torch.equal(out[0], out[1]) and torch.equal(out[0], out[2])
    for name, c in zip("RGB", range(3)):
        if torch.equal(out[0], base[c]):
            return name
    gray = 0.2989 * base[0] + 0.5870 * base[1] + 0.1140 * base[2]
    assert torch.allclose(out[0], gray)
    return "gray"


def outcome_freq(cfg, modality: int, part: int, n: int = 4000) -> dict[str, float]:
    t = TrainTransform(cfg)
    img = np.full((4, 2, 3), RGB, dtype=np.uint8)
    counts = Counter(channel_outcome(cfg, t(img, modality, np.random.default_rng(s), part))
                     for s in range(n))
    return {k: v / n for k, v in counts.items()}


def test_copies_follow_the_visible_images_in_order(sysu_root: Path) -> None:
    on = train_batches(sysu_cfg(sysu_root, *CAJ))
    off = train_batches(sysu_cfg(sysu_root, *CAJ, "DATA.VISIBLE_COPY", "no"))
    assert len(on) == len(off) > 2
    pk = 4  # 2 identities x K = 2
    for a, b in zip(on, off):
        assert a["img"].shape == (3 * pk, 3, 48, 24)
        vis, copy, ir = (slice(0, pk), slice(pk, 2 * pk), slice(2 * pk, 3 * pk))
        assert a["part"].tolist() == [PART_PLAIN] * pk + [PART_COPY] * pk + [PART_PLAIN] * pk
        assert a["modality"].tolist() == [VISIBLE] * 2 * pk + [INFRARED] * pk
        for key in ("index", "pid", "cam"):
            assert torch.equal(a[key][copy], a[key][vis]), key
        # The plain images are the batch without copies, tensor for tensor.
        for key in ("img", "index", "pid", "cam", "modality", "part"):
            assert torch.equal(torch.cat([a[key][vis], a[key][ir]]), b[key]), key
        # Copies are augmented independently: exchange always leaves 3 equal channels.
        c = a["img"][copy]
        assert torch.equal(c[:, 0], c[:, 1]) and torch.equal(c[:, 0], c[:, 2])
        assert not torch.equal(c, a["img"][vis])
        # Plain visible images keep their colour under CAJ's settings (visible rule none).
        v = a["img"][vis]
        assert all(not torch.equal(v[i, 0], v[i, 1]) for i in range(pk))


def test_copy_is_the_one_image_transform_with_its_own_seed(sysu_root: Path) -> None:
    cfg = sysu_cfg(sysu_root, *CAJ)
    ds = build_dataset(cfg, verbose=False)
    batch = train_batches(cfg, epoch=2)[1]
    transform = TrainTransform(cfg)
    plain = sample_seeds(cfg.TRAIN.SEED, 2, 0, 1, 8)
    copies = sample_seeds(cfg.TRAIN.SEED, 2, 0, 1, 4, PART_COPY)
    assert not set(plain) & set(copies)
    seeds = plain[:4] + copies + plain[4:]
    for i, (index, part) in enumerate(zip(batch["index"].tolist(), batch["part"].tolist())):
        rec = ds.train[index]
        one = transform(load_image(rec.path, (48, 24), "lanczos"), rec.modality,
                        np.random.default_rng(seeds[i]), part)
        assert torch.equal(batch["img"][i], one), i


def test_copies_identical_with_workers_and_resume(sysu_root: Path, tmp_path: Path) -> None:
    plain = train_batches(sysu_cfg(sysu_root, *CAJ), epoch=3)
    resumed = train_batches(sysu_cfg(sysu_root, *CAJ, "DATA.NUM_WORKERS", "2", "DATA.CACHE",
                                     "yes", "DATA.CACHE_DIR", str(tmp_path)), epoch=3, start=2)
    assert len(resumed) == len(plain) - 2
    for a, b in zip(plain[2:], resumed):
        for key in a:
            assert torch.equal(a[key], b[key]), key


def test_exchange_picks_r_g_b_evenly_never_gray() -> None:
    cfg = load_config(None, [*OFF, "DATA.CHANNEL_AUG_COPY", "exchange"])
    freq = outcome_freq(cfg, VISIBLE, PART_COPY)
    assert set(freq) == {"R", "G", "B"}
    for name in "RGB":
        assert abs(freq[name] - 1 / 3) < 0.03


def test_adaptive_gray_quarters_and_eighths() -> None:
    cfg = load_config(None, [*OFF, "DATA.CHANNEL_AUG_INFRARED", "adaptive_gray"])
    freq = outcome_freq(cfg, INFRARED, PART_PLAIN)
    expected = {"R": 1 / 4, "G": 1 / 4, "B": 1 / 4, "gray": 1 / 8, "none": 1 / 8}
    assert set(freq) == set(expected)
    for name, p in expected.items():
        assert abs(freq[name] - p) < 0.025, (name, freq[name])


def test_random_rule_uses_the_probability_and_each_part_its_rule() -> None:
    cfg = load_config(None, [*OFF, "DATA.CHANNEL_AUG_PROB", "0.4"])
    freq = outcome_freq(cfg, VISIBLE, PART_PLAIN)
    assert abs(freq["none"] - 0.6) < 0.03
    for name in ("R", "G", "B", "gray"):
        assert abs(freq[name] - 0.1) < 0.02
    caj = load_config(None, [*OFF, *CAJ, "DATA.RE_PROB", "0", "DATA.SIZE_TRAIN", "4,2"])
    assert outcome_freq(caj, VISIBLE, PART_PLAIN, 300) == {"none": 1.0}
    assert set(outcome_freq(caj, VISIBLE, PART_COPY, 300)) == {"R", "G", "B"}
    assert set(outcome_freq(caj, INFRARED, PART_PLAIN, 300)) == {"R", "G", "B", "gray", "none"}
    with pytest.raises(ValueError, match="no channel rule"):
        TrainTransform(caj).sample(np.zeros((4, 2, 3), np.uint8), INFRARED,
                                   np.random.default_rng(0), PART_COPY)


def test_rule_names_come_from_the_registry() -> None:
    for key in ("DATA.CHANNEL_AUG_VISIBLE", "DATA.CHANNEL_AUG_COPY",
                "DATA.CHANNEL_AUG_INFRARED"):
        assert CONFIG_REGISTRIES[key] is CHANNEL_RULES
    assert CONFIG_REGISTRIES["DATA.RESIZE"] is RESIZE_FILTERS
    with pytest.raises(UserError, match="DATA.CHANNEL_AUG_COPY = 'swap' is not a known channel "
                                        "rule; valid names: none, random, exchange"):
        load_config(None, ["DATA.CHANNEL_AUG_COPY", "swap"])
    with pytest.raises(UserError, match="DATA.RE_FILL must be 3 numbers"):
        load_config(None, ["DATA.RE_FILL", "0.1, 0.2"])


def test_erasing_fills_the_box_with_re_fill() -> None:
    cfg = load_config(None, [*OFF, "DATA.SIZE_TRAIN", "32,16", "DATA.RE_PROB", "1",
                             "DATA.RE_FILL", "0.4914, 0.4822, 0.4465"])
    out = TrainTransform(cfg)(np.full((32, 16, 3), 255, np.uint8), VISIBLE,
                              np.random.default_rng(0))
    fill = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    erased = (out == fill).all(dim=0)
    ys, xs = torch.nonzero(erased, as_tuple=True)
    assert len(ys) > 0
    assert erased[ys.min():ys.max() + 1, xs.min():xs.max() + 1].all()
    assert int(erased.sum()) == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


@pytest.mark.parametrize("aspect, mean", [("uniform", (0.3 + 1 / 0.3) / 2),
                                          ("log", (1 / 0.3 - 0.3) / (2 * np.log(1 / 0.3)))])
def test_erasing_aspect_draw(aspect: str, mean: float) -> None:
    cfg = load_config(None, [*OFF, "DATA.RE_AREA", "0.02, 0.05", "DATA.RE_ASPECT", aspect])
    t = TrainTransform(cfg)
    ratios = []
    for s in range(3000):  # 1000 x 1000: every box fits, rounding is negligible
        _, _, h, w = t.erase_box(1000, 1000, np.random.default_rng(s))
        ratios.append(h / w)
    ratios = np.array(ratios)
    assert ratios.min() > 0.3 * 0.97 and ratios.max() < (1 / 0.3) * 1.03
    assert abs(ratios.mean() - mean) < 0.05


class StubRng:
    """Draws ``uniform`` at the top of its range and ``integers`` at its top; counts calls."""

    def __init__(self) -> None:
        self.calls = Counter()

    def uniform(self, low: float, high: float) -> float:
        self.calls["uniform"] += 1
        return high

    def integers(self, low: int, high: int) -> int:
        self.calls["integers"] += 1
        return high - 1


@pytest.mark.parametrize("tries", [1, 7, 100])
def test_erasing_gives_up_after_re_tries(tries: int) -> None:
    cfg = load_config(None, [*OFF, "DATA.RE_AREA", "0.5, 0.9", "DATA.RE_ASPECT", "uniform",
                             "DATA.RE_TRIES", str(tries)])
    rng = StubRng()  # area 0.9 at aspect 1/0.3 never fits
    assert TrainTransform(cfg).erase_box(20, 20, rng) == (0, 0, 0, 0)
    assert rng.calls == {"uniform": 2 * tries}


def erase_cfg(area: str, aspect: str = "uniform"):
    """Square boxes (RE_MIN_RATIO 1) of area fraction up to ``area``'s max."""
    return load_config(None, [*OFF, "DATA.RE_AREA", area, "DATA.RE_ASPECT", aspect,
                              "DATA.RE_MIN_RATIO", "1"])


def test_uniform_erasing_acceptance_is_the_published_one() -> None:
    # Area 0.3 of 10 x 10: h = w = round(sqrt(30)) = 5, placed up to the far corner
    # (top and left drawn inclusive of H - h and W - w).
    assert TrainTransform(erase_cfg("0.02, 0.3")).erase_box(10, 10, StubRng()) == (5, 5, 5, 5)
    # A box of the full height does not fit (h < H), one row less does.
    assert TrainTransform(erase_cfg("0.5, 1")).erase_box(10, 10, StubRng()) == (0, 0, 0, 0)
    assert TrainTransform(erase_cfg("0.5, 0.81")).erase_box(10, 10, StubRng()) == (1, 1, 9, 9)
    # A box rounding to 0 rows is accepted at once and erases nothing; ``log`` tries again.
    rng = StubRng()
    assert TrainTransform(erase_cfg("0.01, 0.05")).erase_box(2, 2, rng) == (2, 2, 0, 0)
    assert rng.calls == {"uniform": 2, "integers": 2}
    rng = StubRng()
    assert TrainTransform(erase_cfg("0.01, 0.05", "log")).erase_box(2, 2, rng) == (0, 0, 0, 0)
    assert rng.calls == {"uniform": 20}


def test_lanczos_is_pils_lanczos(regdb_root: Path) -> None:
    path = str(next((regdb_root / "Visible").rglob("*.bmp")))
    lanczos = load_image(path, (40, 20), "lanczos")
    with Image.open(path) as im:
        expected = np.asarray(im.convert("RGB").resize((20, 40), Image.LANCZOS))
    assert np.array_equal(lanczos, expected)
    assert not np.array_equal(lanczos, load_image(path, (40, 20)))
    assert np.array_equal(load_image(path, (64, 32), "lanczos"), load_image(path, (64, 32)))


def test_loaders_resize_with_lanczos(sysu_root: Path, tmp_path: Path) -> None:
    cfg = sysu_cfg(sysu_root, "DATA.RESIZE", "lanczos")
    ds = build_dataset(cfg, verbose=False, need_train=False)
    batch = next(iter(make_test_loader(cfg, ds.test_sets["infrared"], verbose=False)))
    expected = torch.stack([to_chw(load_image(r.path, (40, 20), "lanczos"))
                            for r in ds.test_sets["infrared"][:len(batch["index"])]])
    assert torch.equal(batch["img"], Normalize(cfg)(expected))
    cached = sysu_cfg(sysu_root, "DATA.RESIZE", "lanczos", "DATA.CACHE", "yes",
                      "DATA.CACHE_DIR", str(tmp_path))
    again = next(iter(make_test_loader(cached, ds.test_sets["infrared"], verbose=False,
                                       split="query")))
    assert torch.equal(again["img"], batch["img"])
    assert [p.name.split("-")[3] for p in tmp_path.iterdir()] == ["lanczos"]


def test_default_batches_are_unchanged(regdb_root: Path) -> None:
    """Checksum of default-key batches recorded with the code before these options existed."""
    cfg = load_config(None, ["DATA.DATASET_NAME", "regdb", "DATA.ROOT", str(regdb_root),
                             "DATA.SIZE_TRAIN", "64,32", "DATA.TRAIN_BATCH_SIZE", "8",
                             "DATA.SAMPLE_ID_INSTANCE", "2", "DATA.PADDING", "4",
                             "DATA.RE_PROB", "0.5", "DATA.CHANNEL_AUG_PROB", "0.5",
                             "DATA.GRAY_PROB_VISIBLE", "0.3", "DATA.GRAY_PROB_INFRARED", "0.2",
                             "DATA.NUM_WORKERS", "0", "DATA.VERIFY_IMAGES", "no"])
    batches = train_batches(cfg, epoch=3)
    digest = hashlib.sha256()
    for b in batches:
        assert not b["part"].any()
        for key in ("img", "pid", "cam", "modality", "index"):
            digest.update(b[key].contiguous().numpy().tobytes())
    assert len(batches) == 8 and digest.hexdigest()[:16] == "01f05cefb6a73bc2"
