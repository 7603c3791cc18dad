"""Untrusted request data -> (28, 28) tensors, through the same preprocessing as `digitlab predict`.

Every rejection is an `ApiError` with an HTTP status, the problem and the fix. Image headers are
read before any pixel is decoded, so an oversized or exotic file costs almost nothing.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from digitlab.data import preprocess
from digitlab.errors import DigitlabError

MAX_BODY_BYTES = 5_000_000  # whole request body, checked from Content-Length and while reading
MAX_PIXELS = 16_000_000  # per decoded image (a 4000x4000 photo); bigger headers are refused undecoded
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "WEBP": "image/webp"}
FORMATS_HINT = "send a PNG, JPEG, BMP or WebP image"


class ApiError(Exception):
    """A client error: HTTP status, what is wrong, and how to fix it."""

    def __init__(self, status: int, problem: str, fix: str):
        super().__init__(problem)
        self.status, self.problem, self.fix = status, problem, fix


def check_image(data: bytes, field: str) -> None:
    """Refuse empty bodies, non-images, unsupported formats and oversized images before decoding."""
    if not data:
        raise ApiError(400, f"the uploaded file '{field}' is empty (0 bytes)",
                       f"attach the image's contents to the form field '{field}'")
    try:
        with Image.open(io.BytesIO(data)) as img:  # lazy: reads the header only
            fmt, (w, h) = img.format, img.size
    except Image.DecompressionBombError:
        raise ApiError(413, f"'{field}' claims an enormous size (possible decompression bomb)",
                       "downscale the image (a digit needs only a few hundred pixels per side)") from None
    except Exception:  # noqa: BLE001 - PIL raises many types for garbage; all mean "not an image"
        raise ApiError(400, f"'{field}' is not an image (its contents are not a known image format)",
                       FORMATS_HINT) from None
    if fmt not in FORMATS:
        raise ApiError(415, f"'{field}' is a {fmt} image, which this server does not accept", FORMATS_HINT)
    if w * h > MAX_PIXELS:
        raise ApiError(413, f"'{field}' is {w}x{h} = {w * h:,} pixels, over the limit of {MAX_PIXELS:,}",
                       "downscale the image (a digit needs only a few hundred pixels per side)")


def from_upload(data: bytes, field: str = "image") -> torch.Tensor:
    """Image bytes -> MNIST-like (28, 28), exactly as `predict` prepares a file."""
    check_image(data, field)
    try:
        return preprocess.to_mnist(preprocess.load_image(data, max_pixels=MAX_PIXELS))
    except DigitlabError as e:
        raise ApiError(400, f"'{field}': {e.problem}", e.fix) from None


def noisy_from_upload(data: bytes, field: str = "image") -> torch.Tensor:
    """An already noisy image -> (28, 28) without cropping (noise would move the box): invert a light
    background, then area-resize the whole image to 28x28."""
    check_image(data, field)
    try:
        g = preprocess.load_image(data, max_pixels=MAX_PIXELS)
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
