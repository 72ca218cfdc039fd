"""MSCMNet's 2-view batch (V1, V2, I1, I2) and its four augmentation pipelines."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data import build_dataset
from data.build import make_train_loader
from data.transforms import PART_COPY, PART_PLAIN, Normalize, TrainTransform, to_chw
from modeling.methods.mscmnet.augment import (
    MATRIX_RULES,
    STREAMS,
    apply_channel_matrix,
    code_matrix,
)
from utils.config import load_config
from utils.constants import INFRARED, VISIBLE
from utils.errors import UserError

pytestmark = pytest.mark.usefixtures("one_thread")

# The four pipelines as configs/mscmnet/mscmnet.ini sets them.
PIPELINES = ["DATA.VISIBLE_COPY", "yes", "DATA.INFRARED_COPY", "yes",
             "DATA.PIXEL_AUG_VISIBLE", "grayscale", "DATA.CHANNEL_AUG_VISIBLE", "none",
             "DATA.CHANNEL_AUG_COPY", "exchange",
             "DATA.CHANNEL_AUG_INFRARED", "green_or_gray",
             "DATA.PIXEL_AUG_INFRARED_COPY", "brightness",
             "DATA.CHANNEL_AUG_INFRARED_COPY", "channel_scale",
             "DATA.RE_PROB", "0.5", "DATA.RE_FILL", "0.4914, 0.4822, 0.4465",
             "DATA.RE_ASPECT", "uniform", "DATA.RE_TRIES", "100"]
SMALL = ["DATA.SIZE_TRAIN", "48,24", "DATA.SIZE_TEST", "48,24", "DATA.TRAIN_BATCH_SIZE", "8",
         "DATA.SAMPLE_ID_INSTANCE", "2", "DATA.PADDING", "4", "DATA.NUM_WORKERS", "0",
         "DATA.VERIFY_IMAGES", "no"]


def sysu_cfg(root: Path, *overrides: str):
    return load_config(None, ["DATA.DATASET_NAME", "sysumm", "DATA.ROOT", str(root), *SMALL,
                              *overrides])


def batches(cfg) -> list[dict]:
    loader, sampler = make_train_loader(cfg, build_dataset(cfg, verbose=False), verbose=False)
    sampler.set_epoch(2)
    return list(loader)


def test_two_view_batch_layout_and_labels(sysu_root: Path) -> None:
    both = batches(sysu_cfg(sysu_root, *PIPELINES))
    caj = batches(sysu_cfg(sysu_root, *PIPELINES, "DATA.INFRARED_COPY", "no"))
    assert len(both) == len(caj) > 1
    pk = 4
    v1, v2, i1, i2 = (slice(j * pk, (j + 1) * pk) for j in range(4))
    for a, b in zip(both, caj):
        assert a["img"].shape == (4 * pk, 3, 48, 24)
        assert a["part"].tolist() == ([PART_PLAIN] * pk + [PART_COPY] * pk) * 2
        assert a["modality"].tolist() == [VISIBLE] * 2 * pk + [INFRARED] * 2 * pk
        # Labels cat(l1, l1, l2, l2): each copy has its image's identity, camera, index.
        for key in ("pid", "cam", "index"):
            assert torch.equal(a[key][v2], a[key][v1]) and torch.equal(a[key][i2], a[key][i1])
        assert torch.equal(a["pid"][v1], a["pid"][i1])  # the sampler's pairing
        # Adding the infrared copies leaves V1, V2 and I1 tensor for tensor.
        for key in ("img", "pid", "cam", "modality", "part", "index"):
            assert torch.equal(a[key][:3 * pk], b[key]), key
        assert not torch.equal(a["img"][i2], a["img"][i1])


def test_infrared_copies_need_their_flag() -> None:
    cfg = load_config(None, ["DATA.SIZE_TRAIN", "4,2"])
    with pytest.raises(ValueError, match="no channel rule"):
        TrainTransform(cfg).sample(np.zeros((4, 2, 3), np.uint8), INFRARED,
                                   np.random.default_rng(0), PART_COPY)
    with pytest.raises(UserError, match="DATA.PIXEL_AUG_COPY = 'blur' is not a known pixel rule"):
        load_config(None, ["DATA.PIXEL_AUG_COPY", "blur"])


@pytest.mark.parametrize("stream", sorted(STREAMS))
def test_each_stream_is_its_published_pipeline(stream) -> None:
    """Each (modality, part) runs: its pixel operation, pad + crop, flip, erasing box,
    its channel operation, with the sample's own Generator, in that order."""
    modality, part = stream
    spec = STREAMS[stream]
    cfg = load_config(None, [*PIPELINES, "DATA.SIZE_TRAIN", "16,8", "DATA.PADDING", "2"])
    t = TrainTransform(cfg)
    img = np.random.default_rng(3).integers(0, 256, size=(16, 8, 3), dtype=np.uint8)
    fill = torch.tensor(cfg.DATA.RE_FILL).view(3, 1)
    seen = set()
    for seed in range(30):
        rng = np.random.default_rng(seed)
        x = spec.pixel(img, rng) if spec.pixel is not None else img
        x = t.pad_crop(x, rng)
        if rng.random() < 0.5:
            x = x[:, ::-1]
        rng.random()  # the (zero) grayscale probability of the core transform
        box = t.erase_box(16, 8, rng) if rng.random() < 0.5 else (0, 0, 0, 0)
        draw = MATRIX_RULES.get(spec.channel)
        m = draw(rng) if draw is not None else (
            None if spec.channel == "none" else code_matrix(int(rng.integers(0, 3))))
        expected = Normalize(cfg)(to_chw(x))
        y0, x0, h, w = box
        expected[:, y0:y0 + h, x0:x0 + w] = fill[:, :, None]
        expected = apply_channel_matrix(expected, m)
        got = t(img, modality, np.random.default_rng(seed), part)
        assert torch.allclose(got, expected, atol=1e-6), (spec.name, seed)
        seen.add(m is None)
    if spec.channel in MATRIX_RULES:  # the matrix rules sometimes leave the image as it is
        assert seen == {True, False}
