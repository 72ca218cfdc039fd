"""Procedural pedestrians for synthetic visible-infrared re-ID datasets.

An identity is a :class:`Genome`: body proportions, garment shapes, a clothing
pattern, accessories, and for every body part a dye colour and a material.
Rendering first draws an integer label map (one label per body part, the
pattern splitting each garment into two labelled parts), then picks the
modality: visible images colour every label with its dye, infrared images map
every label's *material* to an intensity. Shape, pattern and accessories thus
survive the change of modality while hue does not, and since dye and material
are drawn independently, visible brightness does not predict infrared
brightness.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

MODALITIES = ("visible", "thermal", "nir")

# Label map values, one per body part.
BG, SKIN, HAIR, HAT, UPPER_A, UPPER_B, LOWER_A, LOWER_B, SHOES, BAG, PACK = range(11)
NUM_LABELS = 11

# Material -> (thermal intensity, near-infrared reflectance). Thermal cameras see
# heat (skin brightest); active near-infrared cameras see reflectance. The two
# orders agree loosely, so a fabric keeps its rough lightness in either kind.
MATERIALS = {
    "skin": (0.95, 0.78), "hair": (0.40, 0.30), "cotton": (0.78, 0.85),
    "denim": (0.50, 0.45), "wool": (0.62, 0.66), "polyester": (0.30, 0.22),
    "leather": (0.18, 0.12), "nylon": (0.52, 0.58), "rubber": (0.12, 0.08),
    "fleece": (0.90, 0.95),
}
MATERIAL_NAMES = tuple(MATERIALS)
_IR_TABLE = {
    "thermal": np.array([v[0] for v in MATERIALS.values()], np.float32),
    "nir": np.array([v[1] for v in MATERIALS.values()], np.float32),
}
_CLOTH = ("cotton", "denim", "wool", "polyester", "leather", "nylon", "fleece")
_SUPERSAMPLE = 2
_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601 luma weights

# Seed-sequence tags keep the random streams of genomes, images and cameras apart.
TAG_GENOME, TAG_IMAGE, TAG_CAMERA = 11, 12, 13


@dataclass(frozen=True)
class Genome:
    """Everything that stays fixed for one identity (lengths in body heights)."""

    gender: str
    view: str
    height: float
    head: float
    shoulder: float
    hip: float
    torso: float
    arm: float
    sleeves: str
    lower: str
    hair: str
    upper_pattern: str
    lower_pattern: str
    period: float
    angle: float
    split_horizontal: bool
    hat: bool
    bag: str
    bag_y: float
    bag_size: float
    backpack: bool
    material: tuple[int, ...]
    colour: tuple[tuple[float, float, float], ...]


@dataclass(frozen=True)
class CameraStyle:
    """Per-camera appearance: illumination, colour cast and background tones."""

    gain: float
    cast: tuple[float, float, float]
    bg_top: tuple[float, float, float]
    bg_bottom: tuple[float, float, float]
    ir_level: float
    ir_contrast: float


def _hsv(rng: np.random.Generator, s: tuple[float, float], v: tuple[float, float]
         ) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(rng.random(), rng.uniform(*s), rng.uniform(*v))
    return (r, g, b)


def _dyed(rng: np.random.Generator, material: int) -> tuple[float, float, float]:
    """A dye of random hue whose luminance loosely follows the material's IR intensity.

    Reflective fabrics tend to look light in both kinds of light; the hue itself
    carries nothing across modalities.
    """
    ir = float(np.mean([t[material] for t in _IR_TABLE.values()]))
    target = float(np.clip(0.05 + 0.85 * ir + rng.uniform(-0.06, 0.06), 0.05, 0.95))
    hue, sat = rng.random(), rng.uniform(0.1, 0.9)
    while True:  # the most saturated colour of that hue reaching the target luminance
        rgb = np.array(colorsys.hsv_to_rgb(hue, sat, 1.0))
        rgb = rgb * target / float(rgb @ _LUMA)
        if rgb.max() <= 1.0 or sat < 0.02:
            r, g, b = np.clip(rgb, 0.0, 1.0)
            return (float(r), float(g), float(b))
        sat *= 0.8


def _mat(name: str) -> int:
    return MATERIAL_NAMES.index(name)


def _contrasting(rng: np.random.Generator, a: int) -> int:
    """A cloth material whose intensity differs from ``a`` in both IR kinds."""
    ok = [_mat(m) for m in _CLOTH if all(
        abs(t[_mat(m)] - t[a]) >= 0.15 for t in _IR_TABLE.values())]
    return int(rng.choice(ok))


def _cut(quad: list[tuple[float, float]], f: float) -> list[tuple[float, float]]:
    """The top fraction ``f`` of a limb quad [top_a, top_b, bottom_b, bottom_a]."""
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad
    return [(ax, ay), (bx, by), (bx + f * (cx - bx), by + f * (cy - by)),
            (ax + f * (dx - ax), ay + f * (dy - ay))]


def make_genome(seed: int, pid: int) -> Genome:
    """Draw the deterministic genome of identity ``pid`` under ``seed``."""
    rng = np.random.default_rng([seed, TAG_GENOME, pid])
    material = [0] * NUM_LABELS
    colour: list[tuple[float, float, float]] = [(0.0, 0.0, 0.0)] * NUM_LABELS
    material[SKIN], material[HAIR] = _mat("skin"), _mat("hair")
    tone = rng.uniform(0.25, 0.95)
    colour[SKIN] = (tone, tone * rng.uniform(0.72, 0.85), tone * rng.uniform(0.55, 0.7))
    colour[HAIR] = _hsv(rng, (0.2, 0.7), (0.05, 0.55))
    for a, b in ((UPPER_A, UPPER_B), (LOWER_A, LOWER_B)):
        material[a] = _mat(str(rng.choice(_CLOTH)))
        material[b] = _contrasting(rng, material[a])
        colour[a] = _dyed(rng, material[a])
        colour[b] = _dyed(rng, material[b])
    for label, names in ((HAT, ("wool", "cotton", "nylon")), (SHOES, ("leather", "rubber")),
                         (BAG, ("leather", "nylon", "polyester")), (PACK, ("nylon", "polyester"))):
        material[label] = _mat(str(rng.choice(names)))
        colour[label] = _dyed(rng, material[label])
    bag = str(rng.choice(["none", "none", "left", "right"]))
    return Genome(
        gender=str(rng.choice(["female", "male"])), view=str(rng.choice(["front", "back"])),
        height=rng.uniform(0.8, 0.94), head=rng.uniform(0.055, 0.075),
        shoulder=rng.uniform(0.10, 0.15), hip=rng.uniform(0.075, 0.11),
        torso=rng.uniform(0.27, 0.34), arm=rng.uniform(0.03, 0.05),
        sleeves=str(rng.choice(["long", "short"])),
        lower=str(rng.choice(["trousers", "trousers", "shorts", "skirt"])),
        hair=str(rng.choice(["short", "long"])),
        upper_pattern=str(rng.choice(["solid", "stripes", "checks", "split"])),
        lower_pattern=str(rng.choice(["solid", "stripes", "split"])),
        period=rng.uniform(0.07, 0.15), angle=float(rng.choice([0.0, 90.0, 45.0, -45.0])),
        split_horizontal=bool(rng.random() < 0.5),
        hat=bool(rng.random() < 0.25), bag=bag, bag_y=rng.uniform(0.42, 0.6),
        bag_size=rng.uniform(0.06, 0.1), backpack=bool(rng.random() < 0.3),
        material=tuple(material), colour=tuple(colour))


def camera_style(seed: int, cam: int) -> CameraStyle:
    """Deterministic appearance of camera ``cam`` under ``seed``."""
    rng = np.random.default_rng([seed, TAG_CAMERA, cam])
    return CameraStyle(
        gain=rng.uniform(0.9, 1.1), cast=tuple(rng.uniform(-0.06, 0.06, 3)),
        bg_top=_hsv(rng, (0.0, 0.4), (0.3, 0.9)), bg_bottom=_hsv(rng, (0.0, 0.4), (0.2, 0.7)),
        ir_level=rng.uniform(-0.04, 0.04), ir_contrast=rng.uniform(0.9, 1.1))


def _draw_labels(g: Genome, rng: np.random.Generator, hh: int, ww: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Label map (hh, ww) uint8 plus person-frame coordinates (xr, yr) per pixel."""
    bh = g.height * rng.uniform(0.9, 1.04) * hh
    top = (hh - bh) / 2 + rng.uniform(-0.03, 0.03) * hh
    foot = top + bh
    cx = ww / 2 + rng.uniform(-0.1, 0.1) * ww
    lean, stride, swing = rng.uniform(-0.07, 0.07), rng.uniform(0, 0.06), rng.uniform(-0.04, 0.04)

    def p(xr: float, yr: float) -> tuple[float, float]:
        y = top + yr * bh
        return cx + xr * bh + lean * (foot - y), y

    def poly(pts: list[tuple[float, float]], label: int) -> None:
        draw.polygon([p(x, y) for x, y in pts], fill=label)

    def ellipse(xc: float, yc: float, rx: float, ry: float, label: int) -> None:
        x0, y0 = p(xc - rx, yc - ry)
        x1, y1 = p(xc + rx, yc + ry)
        draw.ellipse([min(x0, x1), y0, max(x0, x1), y1], fill=label)

    lab = Image.new("L", (ww, hh), BG)
    draw = ImageDraw.Draw(lab)
    r = g.head
    ys = 2 * r + 0.025
    yh = ys + g.torso
    sh, hp, arm = g.shoulder, g.hip, g.arm
    if g.backpack and g.view == "front":
        poly([(-sh - 0.02, ys + 0.02), (sh + 0.02, ys + 0.02), (sh + 0.02, ys + 0.22),
              (-sh - 0.02, ys + 0.22)], PACK)
    if g.hair == "long":
        poly([(-r * 0.9, r), (r * 0.9, r), (r, ys + 0.06), (-r, ys + 0.06)], HAIR)
    leg_w = hp * 0.85
    for side in (-1, 1):
        fx = side * (hp / 2 + stride / 2)
        leg = [(side * hp, yh), (side * (hp - leg_w), yh), (fx - side * leg_w / 2, 0.97),
               (fx + side * leg_w / 2, 0.97)]
        poly(leg, LOWER_A if g.lower == "trousers" else SKIN)
        if g.lower == "shorts":
            poly(_cut(leg, 0.3), LOWER_A)
        ellipse(fx + side * 0.01, 0.975, leg_w * 0.6, 0.025, SHOES)
    if g.lower == "skirt":
        poly([(-hp, yh - 0.02), (hp, yh - 0.02), (hp * 1.6, yh + 0.22), (-hp * 1.6, yh + 0.22)],
             LOWER_A)
    for side in (-1, 1):
        hx = side * (sh + arm * 0.6 + swing)
        limb = [(side * (sh - arm), ys + 0.01), (side * sh, ys), (hx + side * arm / 2, ys + 0.38),
                (hx - side * arm / 2, ys + 0.38)]
        poly(limb, SKIN)
        poly(_cut(limb, 0.4 if g.sleeves == "short" else 1.0), UPPER_A)
        ellipse(hx, ys + 0.395, arm * 0.55, 0.022, SKIN)
    poly([(-sh, ys), (sh, ys), (hp, yh), (-hp, yh)], UPPER_A)
    ellipse(0, ys - 0.005, r * 0.35, 0.02, SKIN)
    ellipse(0, r + 0.005, r * 0.8, r, HAIR if g.view == "back" else SKIN)
    ellipse(0, r * 0.55, r * 0.85, r * 0.6, HAIR)
    if g.hat:
        ellipse(0, r * 0.5, r * 0.9, r * 0.6, HAT)
        poly([(-r * 1.3, r * 0.75), (r * 1.3, r * 0.75), (r * 1.3, r * 0.95),
              (-r * 1.3, r * 0.95)], HAT)
    if g.backpack:
        if g.view == "back":
            poly([(-sh * 0.8, ys + 0.03), (sh * 0.8, ys + 0.03), (sh * 0.75, ys + 0.24),
                  (-sh * 0.75, ys + 0.24)], PACK)
        else:
            for side in (-1, 1):
                poly([(side * sh * 0.55, ys), (side * sh * 0.8, ys), (side * sh * 0.75, ys + 0.2),
                      (side * sh * 0.5, ys + 0.2)], PACK)
    if g.bag != "none":
        side = -1 if g.bag == "left" else 1
        draw.line([p(-side * sh * 0.7, ys), p(side * (sh + 0.01), g.bag_y)], fill=BAG,
                  width=max(1, round(0.012 * bh)))
        bx, s = side * (sh + 0.02), g.bag_size
        poly([(bx - s / 2, g.bag_y), (bx + s / 2, g.bag_y), (bx + s / 2, g.bag_y + s * 0.8),
              (bx - s / 2, g.bag_y + s * 0.8)], BAG)
    yy, xx = np.mgrid[0:hh, 0:ww].astype(np.float32) + 0.5
    yr = (yy - top) / bh
    xr = (xx - cx - lean * (foot - yy)) / bh
    return np.asarray(lab).copy(), xr, yr, yh


def _apply_patterns(lab: np.ndarray, g: Genome, xr: np.ndarray, yr: np.ndarray,
                    yh: float) -> None:
    """Turn part of each garment's A label into its B label, in place."""
    t = np.deg2rad(g.angle)
    for a, b, kind in ((UPPER_A, UPPER_B, g.upper_pattern), (LOWER_A, LOWER_B, g.lower_pattern)):
        if kind == "solid":
            continue
        if kind == "stripes":
            phase = ((xr * np.sin(t) + yr * np.cos(t)) / g.period if a == UPPER_A
                     else xr / (0.5 * g.period))
            mask = (phase % 1.0) < 0.5
        elif kind == "checks":
            mask = ((xr / g.period) % 1.0 < 0.5) ^ ((yr / g.period) % 1.0 < 0.5)
        elif a == UPPER_A and g.split_horizontal:
            mask = yr > yh - g.torso * 0.45
        else:
            mask = xr > 0
        lab[(lab == a) & mask] = b


def _background_visible(rng: np.random.Generator, style: CameraStyle, hh: int, ww: int
                        ) -> np.ndarray:
    top = np.clip(np.array(style.bg_top) + rng.uniform(-0.08, 0.08, 3), 0, 1)
    bottom = np.clip(np.array(style.bg_bottom) + rng.uniform(-0.08, 0.08, 3), 0, 1)
    w = np.linspace(0, 1, hh, dtype=np.float32)[:, None, None]
    bg = np.broadcast_to(top * (1 - w) + bottom * w, (hh, ww, 3)).astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, hh)), int(rng.integers(0, ww))
        bg[y0:y0 + int(rng.integers(hh // 12, hh // 4)),
           x0:x0 + int(rng.integers(ww // 10, ww // 3))] = _hsv(rng, (0, 0.8), (0.1, 0.9))
    return bg


def _background_ir(rng: np.random.Generator, modality: str, hh: int, ww: int) -> np.ndarray:
    lo, hi = (0.1, 0.35) if modality == "thermal" else (0.25, 0.6)
    a, b = rng.uniform(lo, hi, 2)
    bg = np.repeat(np.linspace(a, b, hh, dtype=np.float32)[:, None], ww, axis=1)
    for _ in range(int(rng.integers(1, 4))):
        y0, x0 = int(rng.integers(0, hh)), int(rng.integers(0, ww))
        bg[y0:y0 + int(rng.integers(hh // 12, hh // 4)),
           x0:x0 + int(rng.integers(ww // 10, ww // 3))] = rng.uniform(0.05, 0.7)
    return bg


def render_person(genome: Genome, modality: str, rng: np.random.Generator,
                  size: tuple[int, int] = (64, 32), style: CameraStyle | None = None
                  ) -> Image.Image:
    """Render one image of ``genome``.

    Args:
        genome: the identity (see :func:`make_genome`).
        modality: ``'visible'`` (RGB), ``'thermal'`` or ``'nir'`` (single channel).
        rng: per-image randomness (pose, background, illumination, noise, flip).
        size: (height, width) in pixels.
        style: camera appearance; a neutral one when None.

    Returns:
        ``PIL.Image`` of mode ``'RGB'`` for visible, ``'L'`` otherwise.
    """
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r}: expected one of {MODALITIES}")
    style = style or CameraStyle(1.0, (0.0, 0.0, 0.0), (0.6, 0.6, 0.6), (0.4, 0.4, 0.4), 0.0, 1.0)
    h, w = size
    hh, ww = h * _SUPERSAMPLE, w * _SUPERSAMPLE
    lab, xr, yr, yh = _draw_labels(genome, rng, hh, ww)
    _apply_patterns(lab, genome, xr, yr, yh)
    person = lab != BG
    # Cylinder-like shading: body edges darker than its centre line.
    shade = 1.0 - 0.3 * np.clip(np.abs(xr) / (genome.shoulder + 0.05), 0, 1) ** 2
    if modality == "visible":
        lut = np.array(genome.colour, np.float32)
        img = _background_visible(rng, style, hh, ww)
        img[person] = lut[lab[person]] * shade[person, None]
        gain = style.gain * rng.uniform(0.9, 1.1)
        img = img * gain * (1 + np.array(style.cast) + rng.uniform(-0.05, 0.05, 3))
        sigma = rng.uniform(0.005, 0.03)
    else:
        lut = _IR_TABLE[modality][np.array(genome.material)]
        img = _background_ir(rng, modality, hh, ww)
        body = lut[lab] * (0.85 + 0.15 * shade) + rng.uniform(-0.04, 0.04)
        img = np.where(person, body, img)
        img = (img - 0.5) * style.ir_contrast * rng.uniform(0.9, 1.1) + 0.5 + style.ir_level
        sigma = rng.uniform(0.015, 0.045)
    img = img.reshape(h, _SUPERSAMPLE, w, _SUPERSAMPLE, -1).mean(axis=(1, 3))
    img = img + rng.normal(0.0, sigma, img.shape)
    if rng.random() < 0.5:
        img = img[:, ::-1]
    out = np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(out) if modality == "visible" else Image.fromarray(out[..., 0])


def image_rng(seed: int, *keys: int) -> np.random.Generator:
    """Independent per-image stream keyed by (seed, keys): order of generation is irrelevant."""
    return np.random.default_rng([seed, TAG_IMAGE, *keys])
