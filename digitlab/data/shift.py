"""Distribution shifts that mimic how real handwritten digits differ from MNIST.

Each shift turns MNIST images (N, 28, 28) float in [0, 1] (white ink on black) into the "raw"
images a user might send: other stroke widths, a constant-width pen, low resolution, binary
pixels, another aspect ratio, slant, broken strokes, blur, a scanned page (dark ink on light
paper), stray marks and noise. The raw images may have any size and polarity: like a real input,
each one then goes through the product's own preprocessing `digitlab.data.preprocess.to_mnist`
(see `apply`), so the suite measures the model *and* the preprocessing a user's image meets.

Severities are fixed constants (chosen before any model was measured on them) and all randomness
comes from a seeded numpy generator, so a shift is a deterministic function of (images, seed).
Geometric shifts reuse the training augmentation's `affine_matrices` on the whole batch; the
morphological ones (skeleton, erosion, dilation) are per image with scipy / scikit-image because
those libraries have no batched form.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from skimage.draw import line_aa
from skimage.morphology import disk, skeletonize

from digitlab.data.augment import affine_matrices
from digitlab.data.preprocess import to_mnist
from digitlab.errors import DigitlabError

VERSION = 1  # bump when a shift's definition changes (cached suites are keyed on it)
UP = 4  # morphology runs on a 4x upsampled digit: sub-pixel control of stroke width
PAD = 4  # MNIST pixels of margin added before strokes grow or the digit moves


@dataclass(frozen=True)
class Shift:
    name: str
    mimics: str
    fn: Callable[[np.ndarray, np.ndarray, np.random.Generator], list[np.ndarray]]
    classes: tuple[int, ...] | None = None  # only these labels are shifted and scored (None: all)


# --- helpers -----------------------------------------------------------------------------------

def _pad(x: np.ndarray, p: int = PAD) -> np.ndarray:
    return np.pad(x, ((0, 0), (p, p), (p, p)))


def _resize(img: np.ndarray, size: tuple[int, int], resample=Image.Resampling.BILINEAR) -> np.ndarray:
    """(H, W) float -> (h, w) = size, with PIL (size given as (h, w))."""
    out = Image.fromarray(img.astype(np.float32)).resize((size[1], size[0]), resample)
    return np.clip(np.asarray(out, dtype=np.float32), 0, 1)


def _up(img: np.ndarray) -> np.ndarray:
    return _resize(img, (img.shape[0] * UP, img.shape[1] * UP))


def _per_image(fn: Callable[[np.ndarray, np.random.Generator], np.ndarray]):
    """Lift a one-image transform (img, rng) -> img to a batch transform, margin added first."""
    def batch(x: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        return [fn(img, rng) for img in _pad(x)]
    return batch


def _signed(rng: np.random.Generator, n: int, low: float, high: float) -> np.ndarray:
    """n magnitudes uniform in [low, high] with random signs."""
    return rng.uniform(low, high, n) * rng.choice([-1.0, 1.0], n)


def _affine(x: np.ndarray, angle=0.0, shear=0.0, shift=None) -> list[np.ndarray]:
    """Batched affine warp (the training augmentation's own matrices) in a field padded by 8 px."""
    xp = torch.from_numpy(_pad(x, 8)).float()[:, None]
    b, _, h, w = xp.shape
    per_image = [torch.as_tensor(v, dtype=torch.float32).expand(b) for v in (angle, shear)]
    shift = torch.zeros(b, 2) if shift is None else torch.as_tensor(shift, dtype=torch.float32)
    theta = affine_matrices(per_image[0], shift, 1.0, per_image[1], size=(h, w))
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)
    return list(F.grid_sample(xp, grid, mode="bilinear", align_corners=False)[:, 0].clamp(0, 1).numpy())


# --- stroke width and pen ----------------------------------------------------------------------

def _thin(img, rng):
    """Grey erosion by 0.75 MNIST px per side: a fine pen (MNIST strokes are ~2.5 px wide)."""
    return ndimage.grey_erosion(_up(img), footprint=disk(3))


def _thick(img, rng):
    """Grey dilation by 1.25 MNIST px per side: a marker."""
    return ndimage.grey_dilation(_up(img), footprint=disk(5))


def _pen(radius: int):
    """Skeleton of the digit redrawn with a round pen of fixed radius (4x pixels): a mouse or
    stylus stroke of constant width, with none of MNIST's pressure-dependent grey profile."""
    def render(img, rng):
        skeleton = skeletonize(_up(img) > 0.4)
        return ndimage.binary_dilation(skeleton, structure=disk(radius)).astype(np.float32)
    return render


# --- resolution, pixels, geometry --------------------------------------------------------------

def _lowres(size: int):
    """The 28x28 field area-averaged to size x size: a small or far-away digit (to_mnist enlarges it)."""
    def render(img, rng):
        return _resize(img[PAD:-PAD, PAD:-PAD], (size, size), Image.Resampling.BOX)
    return render


def _binary(img, rng):
    """Hard 0/1 pixels at 28x28: a thresholded scan or a pixel-grid drawing, no anti-aliasing."""
    return (img > 0.5).astype(np.float32)


def _ink_crop(img: np.ndarray) -> np.ndarray:
    rows, cols = np.nonzero(img > 0.1)
    return img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]


def _stretch(img, rng):
    """The ink box widened towards a square (at most 2x): digits size-normalised without keeping
    the aspect ratio, or simply written wide."""
    crop = _ink_crop(img)
    h, w = crop.shape
    return np.pad(_resize(crop, (h, int(round(min(h, 2 * w))) if w < h else w)), PAD)


def _fill(img, rng):
    """The ink box resized to a 16x16 square, aspect lost, no margin: collections that size-normalise
    every digit to fill its field (a 1 becomes a broad band)."""
    return _resize(_ink_crop(img), (16, 16))


def _bitmap32(img, rng):
    """The ink box scaled so its height fills a 32x32 field (aspect kept, centred across), thresholded
    to 0/1: a form's digit bitmap. The ink touches the top and the bottom of the image."""
    crop = _ink_crop((img > 0.5).astype(np.float32))  # the box of the pixels the bitmap will keep
    h, w = crop.shape
    width = min(32, max(1, round(w * 32 / h)))
    out = np.zeros((32, 32), np.float32)
    left = (32 - width) // 2
    out[:, left:left + width] = _resize(crop, (32, width))
    return (out > 0.5).astype(np.float32)


def _squeeze(img, rng):
    """The ink box narrowed to 0.6 of its width: tall, narrow handwriting."""
    crop = _ink_crop(img)
    h, w = crop.shape
    return np.pad(_resize(crop, (h, max(1, int(round(0.6 * w))))), PAD)


def _slant(x, labels, rng):
    """x-shear of 20-30 degrees either way: strongly slanted writing."""
    return _affine(x, shear=_signed(rng, len(x), 20, 30))


def _rotate(x, labels, rng):
    """Rotation by 15-25 degrees either way: a tilted page or photo."""
    return _affine(x, angle=_signed(rng, len(x), 15, 25))


def _translate(x, labels, rng):
    """Shift by up to 8 px in a larger field: an off-centre digit (preprocessing must re-centre it)."""
    return _affine(x, shift=rng.uniform(-8, 8, (len(x), 2)) / 44)


# --- damage, blur, noise, paper ----------------------------------------------------------------

def _broken(img, rng):
    """Three 3x3 px gaps cut into the strokes: a dry pen, a faint scan."""
    out = img.copy()
    ys, xs = np.nonzero(img > 0.5)
    for i in rng.choice(len(ys), size=min(3, len(ys)), replace=False):
        out[ys[i] - 1:ys[i] + 2, xs[i] - 1:xs[i] + 2] = 0  # PAD keeps the window inside the image
    return out


def _blur(img, rng):
    """Gaussian blur, sigma 1.2 px: an out-of-focus photo."""
    return ndimage.gaussian_filter(img, 1.2)


def _scan(img, rng):
    """Dark ink on grey-white paper with sensor noise and slight blur: a phone photo of paper."""
    paper = 0.9 - 0.75 * ndimage.gaussian_filter(img, 0.6)
    return np.clip(paper + rng.normal(0, 0.05, img.shape), 0, 1).astype(np.float32)


def _invert(img, rng):
    """Dark ink on a white background: every scan or drawing app (preprocessing inverts it)."""
    return 1 - img


def _shot_noise(img, rng):
    """Poisson noise on the ink, MNIST-C style (c = 10 photons at full ink)."""
    return (rng.poisson(img * 10) / 10).astype(np.float32).clip(0, 1)


def _fog(img, rng):
    """A smooth random haze of up to 0.4 added everywhere (MNIST-C's fog): uneven lighting."""
    haze = ndimage.zoom(rng.uniform(0, 1, (5, 5)), img.shape[0] / 5, order=3)[:img.shape[0], :img.shape[1]]
    return np.clip(img + 0.4 * (haze - haze.min()) / max(np.ptp(haze), 1e-6), 0, 1).astype(np.float32)


def _lines(dotted: bool):
    """A stray zigzag (3 segments) or a dotted line across the field, MNIST-C style: a ruled line,
    a crossed-out mark, a scratch. Preprocessing may include it in the digit's box."""
    def render(img, rng):
        out, n = img.copy(), img.shape[0]
        pts = rng.integers(PAD, n - PAD, (4 if not dotted else 2, 2))
        for (r0, c0), (r1, c1) in zip(pts[:-1], pts[1:]):
            rr, cc, val = line_aa(r0, c0, r1, c1)
            keep = (np.arange(len(rr)) % 4 < 2) if dotted else slice(None)
            out[rr[keep], cc[keep]] = np.maximum(out[rr[keep], cc[keep]], val[keep])
        return out
    return render


# --- writing styles MNIST lacks ----------------------------------------------------------------

def _continental(x, labels, rng):
    """A 7 with a bar across its stem and a 1 with a long flag at the top: the European styles
    that MNIST (written in the US) almost never has. Only 1s and 7s are shifted and scored."""
    out = []
    for img, label in zip(_pad(x), labels):
        img = _up(img)
        rows, cols = np.nonzero(img > 0.4)
        top, bottom = rows.min(), rows.max()
        stroke = np.zeros_like(img)
        if label == 7:  # a bar through the stem at 60% height, ~0.5 digit-heights wide
            y = int(top + 0.6 * (bottom - top))
            xs = np.nonzero(img[y] > 0.4)[0]
            cx, half = int(xs.mean()) if len(xs) else int(cols.mean()), int(0.25 * (bottom - top))
            rr, cc, val = line_aa(y, max(cx - half, 0), y, min(cx + half, img.shape[1] - 1))
        else:  # a flag from the top of the 1 down-left, ~40% of its height long
            cx = int(cols[rows == top].mean())
            length = 0.4 * (bottom - top)
            dy, dx = int(length * 0.6), int(length * 0.8)
            rr, cc, val = line_aa(top, cx, min(top + dy, img.shape[0] - 1), max(cx - dx, 0))
        stroke[rr, cc] = val
        width = max(1, int(round(_stroke_radius(img))))
        out.append(np.maximum(img, ndimage.grey_dilation(stroke, footprint=disk(width))))
    return out


def _stroke_radius(img: np.ndarray) -> float:
    """Half the typical stroke width: ink area / skeleton length / 2."""
    ink = img > 0.4
    return ink.sum() / max(skeletonize(ink).sum(), 1) / 2


SHIFTS: tuple[Shift, ...] = (
    Shift("thin", "fine pen, thin strokes (a thin 8 read as 1)", _per_image(_thin)),
    Shift("thick", "marker, thick strokes", _per_image(_thick)),
    Shift("pen", "constant-width mouse / stylus stroke (~2.25 px)", _per_image(_pen(4))),
    Shift("pen_thin", "constant-width thin pen stroke (~1.25 px)", _per_image(_pen(2))),
    Shift("lowres16", "16x16 input, enlarged by preprocessing", _per_image(_lowres(16))),
    Shift("lowres8", "8x8 input, enlarged by preprocessing", _per_image(_lowres(8))),
    Shift("binary", "thresholded 0/1 pixels, no anti-aliasing", _per_image(_binary)),
    Shift("stretch", "aspect ratio widened towards square (<= 2x)", _per_image(_stretch)),
    Shift("fill", "16x16, ink stretched to fill the square (aspect lost)", _per_image(_fill)),
    Shift("bitmap32", "32x32 binary, ink height filling the field", _per_image(_bitmap32)),
    Shift("squeeze", "aspect ratio narrowed to 0.6", _per_image(_squeeze)),
    Shift("slant", "x-shear 20-30 degrees", _slant),
    Shift("rotate", "rotation 15-25 degrees", _rotate),
    Shift("translate", "off-centre by up to 8 px (re-centred)", _translate),
    Shift("broken", "three 3x3 px gaps in the strokes", _per_image(_broken)),
    Shift("blur", "Gaussian blur sigma 1.2 px", _per_image(_blur)),
    Shift("scan", "dark ink on noisy light paper", _per_image(_scan)),
    Shift("invert", "dark ink on white background", _per_image(_invert)),
    Shift("shot_noise", "Poisson noise on the ink (MNIST-C)", _per_image(_shot_noise)),
    Shift("fog", "smooth haze up to 0.4 (MNIST-C)", _per_image(_fog)),
    Shift("zigzag", "a stray zigzag line (MNIST-C)", _per_image(_lines(dotted=False))),
    Shift("dotted_line", "a stray dotted line (MNIST-C)", _per_image(_lines(dotted=True))),
    Shift("continental", "crossed 7s and flagged 1s (only 1s and 7s scored)", _continental, classes=(1, 7)),
)
BY_NAME = {s.name: s for s in SHIFTS}


def get(name: str) -> Shift:
    if name not in BY_NAME:
        raise DigitlabError(f"unknown shift {name!r}", f"use one of: {', '.join(BY_NAME)}")
    return BY_NAME[name]


def apply(shift: Shift, images: np.ndarray, labels: np.ndarray, seed: int = 0
          ) -> tuple[np.ndarray, np.ndarray, int]:
    """Shift MNIST images (N, 28, 28) in [0, 1], then prepare each one with `to_mnist` as a user's
    image would be. Returns (prepared (M, 28, 28) float32, their labels, how many came out blank).

    Only `shift.classes` are kept when set. A shifted image that preprocessing finds blank becomes
    an all-zero image (the model still has to answer it, as the product would refuse it).
    """
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DigitlabError(f"shift expects images of shape (N, 28, 28), got {images.shape}",
                            "pass MNIST-sized images as a (N, 28, 28) array")
    if shift.classes is not None:
        keep = np.isin(labels, shift.classes)
        images, labels = images[keep], labels[keep]
    rng = np.random.default_rng([seed, VERSION, zlib.crc32(shift.name.encode())])  # stable per shift name
    out, blank = np.zeros((len(images), 28, 28), dtype=np.float32), 0
    for i, raw in enumerate(shift.fn(images, labels, rng)):
        try:
            out[i] = to_mnist(raw).numpy()
        except DigitlabError:  # preprocessing found no ink
            blank += 1
    return out, labels, blank


def mix_weights(weights: dict[str, float] | None = None) -> tuple[list[Shift], np.ndarray]:
    """The shifts `mix` draws from and their probabilities: {name: relative weight}, 1 for a shift not
    named, 0 leaves it out. An unknown name, a negative weight, or no shift left that takes every
    digit is an error naming it."""
    weights = dict(weights or {})
    fix = f"weigh shifts from: {', '.join(BY_NAME)}, each 0 or more (1 when not named)"
    unknown = sorted(set(weights) - set(BY_NAME))
    if unknown:
        raise DigitlabError(f"shift weights: unknown shifts {unknown}", fix)
    bad = [f"{n}={w!r}" for n, w in weights.items() if not _weight(w)]
    if bad:
        raise DigitlabError(f"shift weights: not finite numbers >= 0: {', '.join(bad)}", fix)
    chosen = [s for s in SHIFTS if weights.get(s.name, 1) > 0]
    if not any(s.classes is None for s in chosen):
        raise DigitlabError(f"shift weights leave only {[s.name for s in chosen]}, which take some digits only",
                            "give a shift that takes every digit a weight above 0, e.g. thin: 1")
    p = np.array([float(weights.get(s.name, 1)) for s in chosen])
    return chosen, p / p.sum()


def _weight(w) -> bool:
    return isinstance(w, (int, float)) and not isinstance(w, bool) and 0 <= w < float("inf")


def mix(images: np.ndarray, labels: np.ndarray, seed: int, weights: dict[str, float] | None = None) -> np.ndarray:
    """Each image through one shift drawn at random (by `mix_weights`; a shift limited to some classes
    only for those), then prepared by `to_mnist`: training images that look like the suite's, for the
    recognize task's `shift_replay`. An image that preprocessing finds blank keeps its clean form.
    images (N, 28, 28) in [0, 1] -> prepared (N, 28, 28) float32, in the same order."""
    chosen, p = mix_weights(weights)
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    rng = np.random.default_rng([seed, VERSION])
    pick = rng.choice(len(chosen), size=len(images), p=p)
    free = np.array([s.classes is None for s in chosen])
    for i, s in enumerate(chosen):
        if s.classes is not None:  # a digit this shift does not take gets one that takes any digit
            other = (pick == i) & ~np.isin(labels, s.classes)
            pick[other] = rng.choice(np.flatnonzero(free), int(other.sum()), p=p[free] / p[free].sum())
    out = images.copy()
    for i, s in enumerate(chosen):
        idx = np.nonzero(pick == i)[0]
        if len(idx):
            shifted, _, _ = apply(s, images[idx], labels[idx], seed)
            found = shifted.reshape(len(idx), -1).max(1) > 0  # apply leaves a blank result all zero
            out[idx[found]] = shifted[found]
    return out
