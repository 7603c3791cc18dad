"""Images that are NOT a digit, prepared exactly like a real input (`preprocess.to_mnist`).

A recogniser trained on digits alone has never seen anything else, so it calls a dot "0" and an X
"4" with confidence. These generated families teach it (outlier exposure, `tasks/recognize.py`)
and measure it (`bench/junk.py`) on the things people actually draw or upload instead of a digit:

    marks       dot, dash, specks, smudge, X, plus, circled X / plus, hash, asterisk
    scribble    one to three random smooth strokes (6-10 control points: tangled, no digit shape)
    two_digits  two MNIST digits side by side ("12" written as one drawing)
    letters     letters rendered from fonts, digit-like ones left out (see DIGIT_LIKE)
    fashion     Fashion-MNIST clothing images
    bar_digit   a plain bar (a 1 in one stroke) beside an MNIST digit: "12" or "71" as one drawing, the
                pair a stray line also looks like (off by default: a share in TRAIN_MIX of 0)

Training and measuring never share an image: measuring uses other seeds, MNIST's test digits for
`two_digits`, Fashion-MNIST's test split, and fonts that training never sees (STIX vs DejaVu and
Computer Modern). Shapes are drawn on a 96x96 canvas with strokes 5-10% of it wide, so after
`to_mnist` shrinks the drawing into MNIST's 20x20 box the strokes are about as thick as MNIST's.
An image `to_mnist` calls blank is dropped: a blank input is an error before the model, not junk.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from digitlab.data.preprocess import to_mnist
from digitlab.errors import DigitlabError

CANVAS = 96
FAMILIES = ("marks", "scribble", "two_digits", "letters", "fashion", "bar_digit")  # new ones last: seeds by index
# Share of each family in the training set (fashion is the most varied, so the largest share).
TRAIN_MIX = {"fashion": 0.3, "scribble": 0.2, "marks": 0.2, "two_digits": 0.15, "letters": 0.15, "bar_digit": 0.0}
MARKS = ("dot", "dash", "specks", "smudge", "x", "plus", "circled_x", "circled_plus", "hash", "asterisk")

# Letters a digit is often written like: they stay out of the reject set, because calling a
# handwritten 0 "not a digit" because it resembles O would be the worse mistake.
DIGIT_LIKE = {
    "O": "0", "o": "0", "Q": "0", "D": "0",
    "I": "1", "l": "1", "i": "1", "j": "1", "J": "1",
    "Z": "2", "z": "2", "S": "5", "s": "5", "G": "6", "b": "6", "B": "8", "g": "9", "q": "9",
}
LETTERS = "".join(c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in DIGIT_LIKE)
# matplotlib's own font files (no system fonts: the same set on every machine).
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
               "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
               "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "cmr10.ttf", "cmss10.ttf", "cmtt10.ttf",
               "cmti10.ttf", "cmb10.ttf")
MEASURE_FONTS = ("STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf")


def make(family: str, n: int, seed: int, purpose: str = "train", digits: torch.Tensor | None = None,
         fashion: torch.Tensor | None = None) -> torch.Tensor:
    """`n` images of one family as uint8 (n, 28, 28), white on black, prepared by `to_mnist`.

    purpose "train" or "measure" picks the fonts; `digits` (uint8 (N,28,28) MNIST images) feed
    `two_digits`, `fashion` (uint8 (N,28,28)) feeds `fashion` (n of them, drawn without replacement).
    """
    if family not in FAMILIES:
        raise DigitlabError(f"unknown junk family {family!r}", f"use one of: {', '.join(FAMILIES)}")
    rng = np.random.default_rng([seed, FAMILIES.index(family), purpose == "measure"])
    if family == "fashion":
        if fashion is None:
            raise DigitlabError("the fashion junk family needs Fashion-MNIST images", "pass fashion=")
        pick = rng.choice(len(fashion), size=min(n, len(fashion)), replace=False)
        sources = (fashion[i].numpy().astype(np.float32) / 255 for i in pick)
    elif family in ("two_digits", "bar_digit"):
        if digits is None:
            raise DigitlabError(f"the {family} junk family needs MNIST digit images", "pass digits=")
        pair = _two_digits if family == "two_digits" else _bar_digit
        sources = (pair(rng, digits) for _ in range(n))
    elif family == "letters":
        fonts = _fonts(TRAIN_FONTS if purpose == "train" else MEASURE_FONTS)
        sources = (_letter(rng, fonts) for _ in range(n))
    else:
        draw = _scribble if family == "scribble" else _mark
        sources = (draw(rng) for _ in range(n))
    return _prepare(sources)


def shares(families: tuple[str, ...], mix: dict[str, float] | None = None) -> dict[str, float]:
    """Each of `families`' share of the training junk: TRAIN_MIX, overridden by `mix`; zeros left out."""
    table = {**TRAIN_MIX, **(mix or {})}
    return {f: table[f] for f in families if table[f] > 0}


def make_mix(n: int, seed: int, digits: torch.Tensor, fashion: torch.Tensor | None,
             families: tuple[str, ...] = FAMILIES, mix: dict[str, float] | None = None) -> torch.Tensor:
    """`n` training images mixed over `families` in the proportions of `shares`, shuffled: uint8 (n,28,28)."""
    mix_shares = shares(families, mix)
    total = sum(mix_shares.values())
    parts = [make(f, max(1, round(n * s / total)), seed, "train", digits=digits, fashion=fashion)
             for f, s in mix_shares.items()]
    images = torch.cat(parts)
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))]


def _prepare(sources) -> torch.Tensor:
    """Each float (H,W) image through `to_mnist`, blanks dropped -> uint8 (n,28,28)."""
    out = []
    for gray in sources:
        try:
            out.append(to_mnist(gray))
        except DigitlabError:  # "blank": the server answers it as an error, never as junk
            continue
    if not out:
        return torch.zeros(0, 28, 28, dtype=torch.uint8)
    return (torch.stack(out) * 255).round().to(torch.uint8)


# --- drawn shapes ----------------------------------------------------------------------------

def _canvas() -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("L", (CANVAS, CANVAS), 0)
    return img, ImageDraw.Draw(img)


def _width(rng) -> int:
    return int(rng.integers(5, 10))


def _segment(rng, angle_deg: float, length: float, centre=(48, 48)) -> list[tuple[float, float]]:
    a = np.deg2rad(angle_deg)
    dx, dy = np.cos(a) * length / 2, np.sin(a) * length / 2
    return [(centre[0] - dx, centre[1] - dy), (centre[0] + dx, centre[1] + dy)]


def _mark(rng, kind: str | None = None) -> np.ndarray:
    """One of MARKS (random unless `kind` is given), with random size, angle and stroke width."""
    kind = kind or MARKS[rng.integers(len(MARKS))]
    img, draw = _canvas()
    w, size = _width(rng), rng.uniform(40, 80)
    tilt = rng.uniform(-15, 15)
    c = tuple(rng.uniform(40, 56, 2))
    if kind == "dot":
        rx, ry = rng.uniform(5, 30, 2)
        draw.ellipse([c[0] - rx, c[1] - ry, c[0] + rx, c[1] + ry], fill=255)
    elif kind == "dash":  # within 35 degrees of horizontal: a steeper line is a "1"
        draw.line(_segment(rng, rng.uniform(-35, 35), size, c), fill=255, width=w)
    elif kind == "specks":
        for x, y in rng.uniform(8, 88, (int(rng.integers(3, 9)), 2)):
            r = rng.uniform(1.5, 4)
            draw.ellipse([x - r, y - r, x + r, y + r], fill=int(rng.integers(120, 256)))
    elif kind == "smudge":  # a faint, soft blob with noise: a thumb on the camera
        yy, xx = np.mgrid[:CANVAS, :CANVAS]
        s = rng.uniform(8, 25)
        blob = np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * s * s))
        return (0.3 * blob + rng.uniform(0, 0.05, blob.shape)).astype(np.float32)
    else:
        _cross_like(draw, kind, rng, c, size, w, tilt)
    return np.asarray(img, dtype=np.float32) / 255


def _cross_like(draw, kind: str, rng, c, size: float, w: int, tilt: float) -> None:
    if kind in ("x", "circled_x"):
        angles = (45 + tilt + rng.uniform(-10, 10), -45 + tilt + rng.uniform(-10, 10))
    elif kind in ("plus", "circled_plus"):
        angles = (tilt, 90 + tilt)
    elif kind == "asterisk":
        angles = tuple(tilt + k * 180 / 3 for k in range(3))
    else:  # hash: two near-vertical and two near-horizontal bars, offset from the centre
        off = size / 5
        for dx in (-off, off):
            draw.line(_segment(rng, 80 + tilt, size, (c[0] + dx, c[1])), fill=255, width=w)
        for dy in (-off, off):
            draw.line(_segment(rng, tilt, size, (c[0], c[1] + dy)), fill=255, width=w)
        return
    for a in angles:
        draw.line(_segment(rng, a, size, c), fill=255, width=w)
    if kind.startswith("circled"):
        r = size / 2
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=255, width=w)


def _scribble(rng) -> np.ndarray:
    """1-3 strokes, each a smooth curve (Chaikin corner cutting) through 6-10 random points."""
    img, draw = _canvas()
    w = _width(rng)
    for _ in range(int(rng.integers(1, 4))):
        points = rng.uniform(10, 86, (int(rng.integers(6, 11)), 2))
        draw.line([tuple(p) for p in _chaikin(points, 3)], fill=255, width=w, joint="curve")
    return np.asarray(img, dtype=np.float32) / 255


def _chaikin(points: np.ndarray, rounds: int) -> np.ndarray:
    """Chaikin's corner cutting: each round replaces each edge by its 1/4 and 3/4 points; the
    limit is a quadratic B-spline, a smooth pen stroke."""
    for _ in range(rounds):
        a, b = points[:-1], points[1:]
        cut = np.stack([0.75 * a + 0.25 * b, 0.25 * a + 0.75 * b], axis=1).reshape(-1, 2)
        points = np.concatenate([points[:1], cut, points[-1:]])
    return points


# --- digits and letters ----------------------------------------------------------------------

def _two_digits(rng, digits: torch.Tensor) -> np.ndarray:
    """Two random MNIST digits, each cropped to its ink columns, side by side 0-6 px apart."""
    a, b = (digits[int(i)].numpy().astype(np.float32) / 255 for i in rng.integers(len(digits), size=2))
    return _side_by_side(rng, *(d[:, d.max(axis=0) > 0] for d in (a, b)))


def _bar_digit(rng, digits: torch.Tensor) -> np.ndarray:
    """A random MNIST digit with a plain bar as tall as its ink beside it, left or right, as a 1 is
    written in one stroke: 1-3 px wide, its top up to 2 px left or 4 px right of its foot."""
    digit = digits[int(rng.integers(len(digits)))].numpy().astype(np.float32) / 255
    digit = digit[:, digit.max(axis=0) > 0]
    rows = np.nonzero(digit.max(axis=1) > 0)[0]
    lean = int(rng.integers(-2, 5))  # mostly leaning right, as 1s are written
    img = Image.new("L", (abs(lean) + 6, 28), 0)
    x_top = 3 + max(lean, 0)
    ImageDraw.Draw(img).line([(x_top, rows[0]), (x_top - lean, rows[-1])], fill=255, width=int(rng.integers(1, 4)))
    bar = np.asarray(img, dtype=np.float32) / 255
    bar = bar[:, bar.max(axis=0) > 0]
    return _side_by_side(rng, *((bar, digit) if rng.random() < 0.5 else (digit, bar)))


def _side_by_side(rng, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Two ink-cropped 28-row images side by side, 0-6 px apart, the second moved up to 3 px up or down."""
    gap, shift = int(rng.integers(0, 7)), int(rng.integers(-3, 4))
    out = np.zeros((28 + 8, a.shape[1] + gap + b.shape[1] + 8), dtype=np.float32)
    out[4:32, 4:4 + a.shape[1]] = a
    out[4 + shift:32 + shift, 4 + a.shape[1] + gap:4 + a.shape[1] + gap + b.shape[1]] = np.maximum(
        out[4 + shift:32 + shift, 4 + a.shape[1] + gap:4 + a.shape[1] + gap + b.shape[1]], b)
    return out


def _letter(rng, fonts: list[ImageFont.FreeTypeFont]) -> np.ndarray:
    """One letter of LETTERS in a random font, slightly rotated."""
    img, draw = _canvas()
    font = fonts[rng.integers(len(fonts))]
    ch = LETTERS[rng.integers(len(LETTERS))]
    left, top, right, bottom = draw.textbbox((0, 0), ch, font=font)
    draw.text(((CANVAS - (right - left)) / 2 - left, (CANVAS - (bottom - top)) / 2 - top), ch, fill=255, font=font)
    return np.asarray(img.rotate(rng.uniform(-12, 12), resample=Image.Resampling.BILINEAR), dtype=np.float32) / 255


@lru_cache(maxsize=4)
def _fonts(names: tuple[str, ...]) -> list[ImageFont.FreeTypeFont]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DigitlabError(f"matplotlib's font files {', '.join(missing)} are missing from {folder}",
                            "reinstall matplotlib (`pip install --force-reinstall matplotlib`)")
    return [ImageFont.truetype(str(folder / n), size=64) for n in names]
