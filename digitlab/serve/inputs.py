"""Untrusted request data -> (28, 28) tensors, through the same preprocessing as `digitlab predict`.

Every rejection is an `ApiError` with an HTTP status, the problem and the fix. Image headers are
read before any pixel is decoded, so an oversized or exotic file costs almost nothing.
"""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import torch
from PIL import Image

from digitlab.data import preprocess
from digitlab.errors import DigitlabError

MAX_BODY_BYTES = 5_000_000  # whole request body, checked from Content-Length and while reading
# Decoding costs memory by pixels, not bytes (a 24 KB PNG can hold 16 Mpx = 260 MB of work), so the
# limits are on pixels actually decoded, read from the headers before any pixel is: a JPEG is decoded
# at 1/2..1/8 scale when that brings it near WORK_SIDE, so a large photo still fits.
MAX_PIXELS = 4_000_000  # decoded pixels per image (2000x2000; a digit needs far less)
MAX_REQUEST_PIXELS = 16_000_000  # decoded pixels per request, all its images together
WORK_SIDE = 1024  # images are box-reduced to at most about this before the float copy
DECODE_SLOTS = min(4, os.cpu_count() or 1)  # images decoded at once, server-wide: decoding is CPU-bound,
                                            # more at once only costs memory (~50 MB each at the limits)
_decoding = threading.BoundedSemaphore(DECODE_SLOTS)
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "WEBP": "image/webp"}
FORMATS_HINT = "send a PNG, JPEG, BMP or WebP image"
DOWNSCALE = "downscale the image (a digit needs only a few hundred pixels per side)"


class ApiError(Exception):
    """A client error: HTTP status, what is wrong, and how to fix it."""

    def __init__(self, status: int, problem: str, fix: str):
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix


def check_image(data: bytes, field: str) -> int:
    """Refuse empty bodies, non-images, unsupported formats and oversized images before decoding.
    Returns the number of pixels decoding will produce (after a JPEG's reduced-scale draft)."""
    if not data:
        raise ApiError(400, f"the uploaded file '{field}' is empty (0 bytes)",
                       f"attach the image's contents to the form field '{field}'")
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
            fmt, (w, h) = img.format, img.size
            if fmt == "JPEG":
                img.draft(None, _work_size(w, h))  # configures the decoder; img.size becomes the decoded size
            decoded = img.size[0] * img.size[1]
    except Image.DecompressionBombError:
        raise ApiError(413, f"'{field}' claims an enormous size (possible decompression bomb)", DOWNSCALE) from None
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage; all mean "not an image"
        raise ApiError(400, f"'{field}' is not an image (its contents are not a known image format)",
                       FORMATS_HINT) from None
    if fmt not in FORMATS:
        raise ApiError(415, f"'{field}' is a {fmt} image, which this server does not accept", FORMATS_HINT)
    if decoded > MAX_PIXELS:
        raise ApiError(413, f"'{field}' is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}", DOWNSCALE)
    return decoded


def check_request(files: list[tuple[bytes, str]]) -> None:
    """Every image of one request checked from its header, and their decoded pixels summed, before
    any is decoded: many small files must not add up to gigabytes of work."""
    total = sum(check_image(data, field) for data, field in files)
    if total > MAX_REQUEST_PIXELS:
        raise ApiError(413, f"the {len(files)} images of this request add up to {total:,} pixels, "
                            f"over the limit of {MAX_REQUEST_PIXELS:,} per request",
                       f"send fewer or smaller images per request ({DOWNSCALE})")


def _work_size(w: int, h: int) -> tuple[int, int]:
    scale = WORK_SIDE / max(w, h, 1)
    return (max(1, int(w * scale)), max(1, int(h * scale))) if scale < 1 else (w, h)


def _decode(data: bytes) -> np.ndarray:
    """Float grayscale at most ~WORK_SIDE per side; few at a time (DECODE_SLOTS) bound the memory."""
    with _decoding:
        return preprocess.load_image(data, max_pixels=MAX_PIXELS * 64, max_side=WORK_SIDE)


def from_upload(data: bytes, field: str = "image", checked: bool = False) -> torch.Tensor:
    """Image bytes -> MNIST-like (28, 28), as `predict` prepares a file (shrunk first if large).
    `checked`: check_request already looked at it."""
    if not checked:
        check_image(data, field)
    try:
        return preprocess.to_mnist(_decode(data))
    except DigitlabError as e:
        raise ApiError(400, f"'{field}': {e.problem}", e.fix) from None


def noisy_from_upload(data: bytes, field: str = "image") -> torch.Tensor:
    """An already noisy image -> (28, 28) without cropping (noise would move the box): invert a light
    background, then area-resize the whole image to 28x28."""
    check_image(data, field)
    try:
        g = _decode(data)
    except DigitlabError as e:
        raise ApiError(400, f"'{field}': {e.problem}", e.fix) from None
    return preprocess.noisy_to_28(g)


def from_pixels(values, normalize: bool = True, field: str = "pixels") -> torch.Tensor:
    """A 28x28 grid (already shape-checked by the schema) -> (28, 28), as `predict` would prepare it."""
    try:
        return preprocess.from_array(values, normalize=normalize)
    except DigitlabError as e:
        raise ApiError(422, f"'{field}': {e.problem}", e.fix) from None


def as_list(image: torch.Tensor | np.ndarray) -> list[list[float]]:
    """(28, 28) -> nested lists rounded to 3 decimals (small JSON)."""
    return np.round(np.asarray(image, dtype=np.float32).reshape(28, 28), 3).tolist()
