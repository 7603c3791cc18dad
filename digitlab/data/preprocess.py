"""MNIST's own preprocessing for real images: photos, scans, canvas drawings -> (28, 28) in [0, 1].

LeCun et al. size-normalised each NIST digit to fit a 20x20 box (keeping its aspect ratio, with
anti-aliasing) and placed it in a 28x28 field so that its centre of mass sits at the centre.
A model trained on MNIST only recognises inputs prepared the same way, so `predict`, the web
server and every other command share these functions.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from digitlab.errors import DigitlabError

if TYPE_CHECKING:
    import torch

VERSION = 10  # bump when the output changes (suites prepared by it are cached, keyed on it); 2: haze removal,
# 3: haze residue cleared, 4: a form's box and an underline dropped, 5-6, 8: ruled lines dropped,
# 7: a digit cropped tight (ink near all four sides) gets no haze removal and no border-noise floor,
# 9: the border-noise floor ignores clear ink (a digit touching the top and bottom was "blank"),
# 10: ink near the top and the bottom (not all four sides) counts as cropped tight
SIZE = 28  # MNIST field
BOX = 20  # the digit's longer side after size normalisation
# Target centre of mass (row, col) in pixel-index coordinates. Measured on the MNIST test set:
# mean (13.99, 14.01), std 0.29 per axis -- the std of a uniform +-0.5 error, i.e. MNIST itself was
# centred with whole-pixel shifts onto 14.
CENTRE = 14.0
MIN_CONTRAST = 0.1  # ink must differ from the background by 10% of full range, else "blank"
INK_THRESHOLD = 0.2  # fraction of the (stretched) max that is certainly ink, not noise or JPEG ringing
CLEAR_INK = 0.5  # levels this high are a stroke's body, never paper noise
HAZE_SIDE = 64  # the background estimate is computed at most this size: haze is smooth
HAZE_MIN = 0.05  # border pixels this much above the border median (after stretching): an uneven background
RULE_COVER = 0.8  # a side of a box, an underline or a ruled line has ink along this much of its length
RULE_MARGIN = 0.15  # a ruled line reaches past the rest of the ink by this much of the width on each side
HAZE_RESIDUE = 0.2  # on an uneven background, levels below this fraction of the ink are haze the opening missed
FORMATS_HINT = "use a PNG, JPEG, BMP, WebP or GIF image"


def load_image(source: str | Path | bytes, max_pixels: int = 40_000_000, max_side: int | None = None) -> np.ndarray:
    """Decode an image file or its bytes to float32 grayscale (H, W) in [0, 1].

    The size is checked from the header before any pixel is decoded (Image.open is lazy), so a
    small file that claims huge dimensions costs nothing. EXIF orientation is applied; alpha is
    composited onto the image's own background (see `_composite`). `max_side`: decode a JPEG at a
    reduced scale (its DCT allows 1/2 to 1/8) and box-reduce any image so its longest side is at
    most about that, before the float copy (a digit needs a few hundred pixels; a server must not
    hold 16 Mpx float images).
    """
    name, fp = _open_source(source)
    try:
        with Image.open(fp) as img:
            w, h = img.size
            if w * h > max_pixels:
                raise _too_big(name, f"{w}x{h} = {w * h:,}", max_pixels)
            if max_side:
                img.draft(None, (max(1, w * max_side // max(w, h)), max(1, h * max_side // max(w, h))))
            if max_side:  # in place: no second full-size copy of a large image
                ImageOps.exif_transpose(img, in_place=True)  # decodes the pixels
                return _to_gray(_shrink(img, max_side))
            img = ImageOps.exif_transpose(img)  # decodes the pixels
            return _to_gray(img)
    except Image.DecompressionBombError:
        # Image.open refuses above twice Image.MAX_IMAGE_PIXELS (Pillow's docs, "open") before
        # the size can be read: the same message, with the bound that was crossed.
        pil_limit = 2 * Image.MAX_IMAGE_PIXELS
        raise _too_big(name, f"over {pil_limit:,}", min(max_pixels, pil_limit)) from None
    except UnidentifiedImageError:
        raise DigitlabError(f"{name} is not an image (its contents are not a known image format)",
                            FORMATS_HINT) from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise DigitlabError(f"could not decode {name}: {e}",
                            f"the file may be truncated or damaged; save it again ({FORMATS_HINT})") from None


def to_mnist(gray: np.ndarray) -> "torch.Tensor":
    """`to_mnist_array` as a torch tensor."""
    import torch

    return torch.from_numpy(to_mnist_array(gray))


def to_mnist_array(gray: np.ndarray) -> np.ndarray:
    """Grayscale (H, W) -> float32 (28, 28) in [0, 1], white ink on black, prepared like MNIST.

    Steps: make the ink white on black and stretch it to [0, 1]; subtract uneven lighting; drop a
    notebook's ruled lines, and a form's box or an underline set apart from the digit; crop to the
    ink's bounding box;
    fit the box into 20x20 keeping the aspect ratio (area averaging when shrinking, as MNIST's
    anti-aliased grey levels are ink coverage); paste into 28x28 with the centre of mass on (14, 14).
    The shift is whole pixels, as in MNIST (see CENTRE): no second resampling blurs the strokes and
    an already-prepared image comes back unchanged.
    """
    g = np.asarray(gray, dtype=np.float32)
    if g.ndim != 2 or g.size == 0:
        raise DigitlabError(f"expected a 2-D grayscale image, got shape {g.shape}",
                            "pass a single-channel (H, W) array, e.g. from load_image")
    if not np.isfinite(g).all():
        raise DigitlabError("the image contains NaN or infinite values", "pass finite pixel values")
    g = _white_ink(g)
    tight = _cropped_tight(g)  # cut to the digit: its border is ink, not paper (docs/shift.md)
    g = _drop_box_and_underline(_drop_ruled_lines(_remove_haze(g, tight)))
    return _paste_centred(_fit_box(_crop_to_ink(g, tight)))


def prepare(source: str | Path | bytes) -> "torch.Tensor":
    """Image file or bytes -> MNIST-like (28, 28) tensor."""
    return to_mnist(load_image(source))


def noisy_to_28(gray: np.ndarray) -> "torch.Tensor":
    """An already noisy grayscale image -> float32 (28, 28), white ink on black, WITHOUT cropping:
    noise all over the image would move the ink box. Invert a light background, then area-resize."""
    g = np.asarray(gray, dtype=np.float32)
    border = _border(g)
    if np.median(border) > 0.5:
        g = 1 - g
    if g.shape != (SIZE, SIZE):
        g = np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.Resampling.BOX))
    import torch

    return torch.from_numpy(np.clip(g, 0, 1).astype(np.float32))


def from_pil(img: Image.Image) -> np.ndarray:
    """A PIL image (any mode, alpha composited as for files) -> float32 grayscale (H, W) in [0, 1]."""
    return _to_gray(img)


def from_array(values, normalize: bool = True) -> "torch.Tensor":
    """A 28x28 grid of pixel values (nested lists or array) -> float32 (28, 28) tensor in [0, 1].

    uint8 values, or any values above 1, are read as [0, 255]; otherwise as [0, 1]. By default the
    grid goes through `to_mnist`: a drawing canvas downsampled to 28x28 is rarely centred or
    size-normalised like MNIST (and may be dark-on-light), while an already MNIST-like grid passes
    through unchanged. `normalize=False` only validates and scales.
    """
    try:
        a = np.asarray(values)
    except (ValueError, TypeError):
        a = None
    if a is None or a.dtype.kind not in "biuf":  # bool, int, uint, float
        raise DigitlabError("pixel values must be a 28x28 grid of numbers",
                            "send 28 rows of 28 numbers each, in [0, 1] or [0, 255]")
    if a.shape != (SIZE, SIZE):
        raise DigitlabError(f"pixel values must be 28x28, got shape {a.shape}",
                            "send 28 rows of 28 numbers each (downsample a larger drawing first)")
    if not np.isfinite(a).all():
        raise DigitlabError("pixel values contain NaN or infinity", "send finite numbers in [0, 1] or [0, 255]")
    lo, hi = float(a.min()), float(a.max())
    if lo < 0 or hi > 255:
        raise DigitlabError(f"pixel values must lie in [0, 1] or [0, 255], got min {lo:g} and max {hi:g}",
                            "rescale the values into [0, 1] (or [0, 255])")
    scaled = a.astype(np.float32) / (255 if a.dtype == np.uint8 or hi > 1 else 1)
    import torch

    return to_mnist(scaled) if normalize else torch.from_numpy(scaled)


# --- loading -----------------------------------------------------------------------------------

def _open_source(source) -> tuple[str, object]:
    """(name for messages, path or file object for Image.open)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DigitlabError("the image data is empty (0 bytes)", "send the file's contents, not an empty body")
        return "the uploaded data", io.BytesIO(bytes(source))
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            what = "is a directory, not an image file" if path.is_dir() else "does not exist"
            raise DigitlabError(f"image file {path} {what}", "check the path to the image file")
        if path.stat().st_size == 0:
            raise DigitlabError(f"image file {path} is empty (0 bytes)", "pick a non-empty image file")
        return str(path), path
    raise DigitlabError(f"cannot read an image from a {type(source).__name__}",
                        "pass a file path or the file's bytes")


def _too_big(name: str, pixels: str, max_pixels: int) -> DigitlabError:
    return DigitlabError(f"{name} is too large: {pixels} pixels, the limit is {max_pixels:,} "
                         "(possible decompression bomb)",
                         "downscale the image (a digit needs only a few hundred pixels per side)")


def _shrink(img: Image.Image, max_side: int) -> Image.Image:
    """Box-reduce by a whole factor so the longest side is <= max_side (area averaging, like MNIST's
    own downscaling). Palette, bilevel and 16-bit images are converted first: reduce() needs
    8-bit bands or I/F, and nearest-neighbour sampling would drop thin strokes."""
    factor = -(-max(img.size) // max_side)
    if factor <= 1:
        return img
    if img.mode.startswith("I;16"):
        img = img.convert("I")
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):
        alpha = img.mode in ("PA", "RGBa", "La") or "transparency" in img.info
        img = img.convert("RGBA" if alpha else "RGB")
    return img.reduce(factor)


def _to_gray(img: Image.Image) -> np.ndarray:
    """Any PIL mode -> float32 (H, W) in [0, 1]."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):  # high bit depth: scale by the maximum
        a = np.clip(np.asarray(img, dtype=np.float32), 0, None)
        return a / a.max() if a.max() > 0 else a
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        gray = np.asarray(rgba.convert("L"), dtype=np.float32) / 255
        alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
        return _composite(gray, alpha)
    return np.asarray(img.convert("L"), dtype=np.float32) / 255


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto the image's own background.

    Strokes drawn in one colour on a transparent canvas carry the digit only in alpha: then alpha
    is the ink coverage. Otherwise the visible pixels' median (the paper) fills transparent areas;
    a fixed white or black fill would erase white-on-transparent or black-on-transparent drawings.
    """
    visible = gray[alpha > 0]
    if visible.size == 0 or visible.max() - visible.min() < MIN_CONTRAST:
        return alpha  # white ink on black, like MNIST
    return (alpha * gray + (1 - alpha) * np.median(visible)).astype(np.float32)


# --- MNIST normalisation -----------------------------------------------------------------------

def _border(g: np.ndarray) -> np.ndarray:
    """The outermost pixels (corners twice): what the paper looks like, where the digit does not reach."""
    return np.concatenate([g[0], g[-1], g[:, 0], g[:, -1]])


def _white_ink(g: np.ndarray) -> np.ndarray:
    """Invert a light background, then stretch so background -> 0 and the brightest ink -> 1."""
    border = _border(g)
    bg = float(np.median(border))
    if bg > (float(g.min()) + float(g.max())) / 2:  # background closer to white than the ink is
        g, bg = 1 - g, 1 - bg
    hi = float(g.max())
    if hi - bg < MIN_CONTRAST:
        raise DigitlabError("no digit found in image: it is blank",
                            "draw or photograph a digit with clear contrast against the background")
    return np.clip((g - bg) / (hi - bg), 0, 1)


def _remove_haze(g: np.ndarray, tight: bool) -> np.ndarray:
    """Subtract a smooth background, when the border says there is one: uneven lighting on paper,
    a shadow, fog (docs/shift.md).

    Otherwise the crop to the ink takes the haze for ink and the digit ends up small. The
    background is a grey opening (min, then max, over a window of a third of the shorter side:
    wider than any pen stroke, so strokes vanish from it) of a copy at most HAZE_SIDE px on a side,
    enlarged back. What is left below HAZE_RESIDUE of the ink is cleared. Ink on a clean background,
    MNIST's own included, never gets here and comes back unchanged.
    """
    if tight:  # the border is the digit's own ink, not paper: it tells nothing of the background
        return g
    border = _border(g)
    if np.quantile(border, 0.9) < HAZE_MIN:  # an even background: nothing to remove, and thick strokes stay whole
        return g
    small = _shrink(Image.fromarray(g), HAZE_SIDE) if max(g.shape) > HAZE_SIDE else Image.fromarray(g)
    a = np.asarray(small, dtype=np.float32)
    k = min(a.shape) // 3 | 1  # odd
    if k < 5:  # a tiny image (an 8x8 digit): its strokes are as wide as any window, nothing tells haze apart
        return g
    background = _rank_filter(_rank_filter(a, k, np.min), k, np.max)
    if background.shape != g.shape:
        background = np.asarray(Image.fromarray(background).resize(g.shape[::-1], Image.Resampling.BILINEAR))
    out = np.clip(g - background, 0, None)
    peak = float(out.max())
    if peak < MIN_CONTRAST:  # nothing but haze: leave it to the blank check
        return g
    # Haze that varies faster than the window (fog's blotches, a few px apart: often the opening is
    # zero) is left behind as faint blotches, which a model reads as strokes; the ink is far above them
    # (docs/shift.md, "Haze residue").
    return np.clip((out / peak - HAZE_RESIDUE) / (1 - HAZE_RESIDUE), 0, 1)


def _cropped_tight(g: np.ndarray) -> bool:
    """Whether clear ink comes within 2 px of the top and the bottom: an image cut to the digit, or a
    collection's digit size-normalised so that its height fills the field (docs/shift.md). Not left
    and right: a notebook's ruled lines reach those on any photo."""
    rows = np.flatnonzero((g >= CLEAR_INK).any(1))
    return rows.size > 0 and rows[0] <= 2 and rows[-1] >= g.shape[0] - 3


def _rank_filter(a: np.ndarray, k: int, reduce) -> np.ndarray:
    """Min or max over a k x k window (k odd), separably, edges repeated."""
    r = k // 2
    for axis in (0, 1):
        padded = np.pad(a, [(r, r) if ax == axis else (0, 0) for ax in (0, 1)], mode="edge")
        a = reduce(np.lib.stride_tricks.sliding_window_view(padded, k, axis=axis), axis=-1)
    return a


def _drop_box_and_underline(g: np.ndarray) -> np.ndarray:
    """Drop the box of a form's cell around the digit, or a line under it, when a gap of background
    separates it from the digit: otherwise the crop keeps the box (or line) and the digit ends up
    small inside it (docs/shift.md, "Boxes and underlines"). A line that touches the digit stays,
    and a line above it is never dropped: it may be a 7's or a 5's bar.
    """
    ink = g > INK_THRESHOLD
    rows, cols = np.flatnonzero(ink.any(1)), np.flatnonzero(ink.any(0))
    if rows.size < 3 or cols.size < 3:
        return g
    r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = ink[r0:r1, c0:c1]
    inner = _inside_box(box)
    if inner is not None:
        t, b, l, r = inner
        out = np.zeros_like(g)
        out[r0 + t:r0 + b, c0 + l:c0 + r] = g[r0 + t:r0 + b, c0 + l:c0 + r]
        return out
    line = _underline(box)
    if line is not None:
        out = g.copy()
        out[r0 + line:] = 0
        return out
    return g


def _drop_ruled_lines(g: np.ndarray) -> np.ndarray:
    """Clear a notebook's ruled lines: thin bands of rows inked across RULE_COVER of the image's width,
    with the rest of the ink well inside them on both sides (a photo of a digit on lined paper), even
    where the digit touches or crosses them (docs/shift.md, "Boxes and underlines").

    Kept: a band that is the top of the ink and touches what is below (a 7's bar reaching past its stem
    on both sides), and rows less than twice as long as the rest is tall (a narrow 1 cropped tight has
    full rows). A 2's base or a 7's bar cropped tight reaches past the rest on one side only, so it
    stays too.
    """
    ink = g > INK_THRESHOLD
    h, w = ink.shape
    ruled = ink.sum(1) >= RULE_COVER * w
    rest = np.flatnonzero(ink[~ruled].any(0))
    if not ruled.any() or rest.size == 0 or rest[0] < RULE_MARGIN * w or rest[-1] >= (1 - RULE_MARGIN) * w:
        return g  # no ruled rows, nothing else, or the rest reaches the sides: the lines are part of the drawing
    if w < 2 * (ink.any(1) & ~ruled).sum():
        return g  # rows under twice as long as the rest is tall: a digit's own (a narrow 1, a 2's base)
    out, inked = g.copy(), np.flatnonzero(ink.any(1))
    for top, bottom in _runs(ruled):
        bar = top == inked[0] and bottom < h and ink[bottom].any()  # the topmost ink, touching what is below
        if not bar:
            out[top:bottom] = 0
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of each run of True in a 1-D bool array."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def _inside_box(box: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, bottom, left, right) of the inside of a thin frame drawn along the ink's bounding box
    `box` (bool), if the ink inside keeps a gap from it; else None."""
    h, w = box.shape
    sides = [_leading_full(box.sum(1), w), _leading_full(box.sum(1)[::-1], w),
             _leading_full(box.sum(0), h), _leading_full(box.sum(0)[::-1], h)]
    if min(sides) == 0 or max(sides) > min(h, w) / 8:  # not a frame on all four sides, or a thick one: a digit
        return None
    t, b, l, r = sides[0], h - sides[1], sides[2], w - sides[3]
    inside = box[t:b, l:r]
    if inside.any(1).sum() < max(2, len(inside) / 8):  # nothing (or a speck) inside: the frame is the drawing
        return None  # (a square 0)
    touches = inside[0].any() or inside[-1].any() or inside[:, 0].any() or inside[:, -1].any()
    return None if touches else (t, b, l, r)


def _underline(box: np.ndarray) -> int | None:
    """First row of a straight line at the bottom of `box` (bool), below a gap, at least as wide as
    the ink above it and at most a sixth of its height; else None."""
    filled = box.any(1)
    empty = np.flatnonzero(~filled)
    if empty.size == 0:
        return None
    line_top = empty[-1] + 1  # the bottom band of rows holding ink
    body = box[:np.flatnonzero(filled[:line_top])[-1] + 1]
    band = box[line_top:]
    body_cols, band_cols = np.flatnonzero(body.any(0)), np.flatnonzero(band.any(0))
    solid = band.any(0).sum() >= RULE_COVER * (band_cols[-1] - band_cols[0] + 1)  # not a dotted line or specks
    wide = band_cols[-1] - band_cols[0] >= body_cols[-1] - body_cols[0]
    thin = len(band) <= max(2, len(body) / 6)
    return int(line_top) if solid and wide and thin else None


def _leading_full(profile: np.ndarray, span: int) -> int:
    """How many leading entries of `profile` (ink per line) cover at least RULE_COVER of `span`."""
    full = profile >= RULE_COVER * span
    return int(full.argmin()) if not full.all() else len(full)


def _crop_to_ink(g: np.ndarray, tight: bool) -> np.ndarray:
    """Crop to the ink's bounding box.

    The box is found from clear ink (> INK_THRESHOLD of the max), so JPEG ringing and specks do not
    widen it, then grown by one pixel per side where that line holds faint pixels above the
    background noise: the 1-px anti-aliased rim of an already small digit (MNIST's own) is part of
    its box, and one source pixel is negligible for a large photo.
    """
    # The background noise, from the border's paper: a digit normalised to its box touches the top and
    # bottom, and its clear ink there once set the floor above every stroke ("blank", docs/shift.md).
    # A tight crop's border is ink: no noise estimate.
    floor = 0.0 if tight else _paper_noise(_border(g))
    core = g > max(floor, INK_THRESHOLD)
    if not core.any():
        raise DigitlabError("no digit found in image: it is blank",
                            "draw or photograph a digit with clear contrast against the background")
    faint = g > floor
    (top, bottom), (left, right) = (_grow(np.flatnonzero(core.any(axis=a)), faint.any(axis=a)) for a in (1, 0))
    return g[top:bottom + 1, left:right + 1]


def _paper_noise(border: np.ndarray) -> float:
    """The 90% quantile of the border's pixels below clear ink (0 when the border is all ink)."""
    paper = border[border < CLEAR_INK]
    return float(np.quantile(paper, 0.9)) if paper.size else 0.0


def _grow(idx: np.ndarray, faint: np.ndarray) -> tuple[int, int]:
    """First/last index of the core, each extended by one line if that line is faint ink."""
    lo, hi = int(idx[0]), int(idx[-1])
    return lo - int(lo > 0 and faint[lo - 1]), hi + int(hi < faint.size - 1 and faint[hi + 1])


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Resize so the longer side is 20 px, keeping the aspect ratio; renormalise the max to 1."""
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))  # PIL wants (width, height)
    if size != (w, h):
        # BOX = area average = ink coverage when shrinking; BILINEAR when enlarging (no ringing).
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        crop = np.asarray(Image.fromarray(crop.astype(np.float32)).resize(size, resample))
    crop = np.clip(crop, 0, None)
    return (crop / crop.max()).astype(np.float32)  # MNIST digits reach full white


def _paste_centred(patch: np.ndarray) -> np.ndarray:
    """Place the patch in 28x28 so its centre of mass lands on CENTRE (whole pixels, ink kept inside)."""
    h, w = patch.shape
    mass = patch.sum()
    cy = patch.sum(axis=1) @ np.arange(h) / mass
    cx = patch.sum(axis=0) @ np.arange(w) / mass
    top = int(np.clip(np.round(CENTRE - cy), 0, SIZE - h))
    left = int(np.clip(np.round(CENTRE - cx), 0, SIZE - w))
    out = np.zeros((SIZE, SIZE), dtype=np.float32)
    out[top:top + h, left:left + w] = patch
    return out
