"""IDX files (the MNIST container format): decode, validate, encode.

Every problem becomes a DigitlabError that names the file and the fix, because a
struct/numpy traceback tells a user nothing about which download went wrong.
"""

from __future__ import annotations

import gzip
import io
import struct
import zlib

import numpy as np

from digitlab.errors import DigitlabError

GZIP_MAGIC = b"\x1f\x8b"
LABELS_MAGIC = 0x00000801  # uint8, 1 dimension: (N,)
IMAGES_MAGIC = 0x00000803  # uint8, 3 dimensions: (N, 28, 28)
IMAGE_SIDE = 28
NUM_CLASSES = 10
# Decompressed size cap: the largest real file (train images) is 47,040,016 bytes;
# the cap stops a hostile or broken .gz from filling memory.
MAX_RAW_BYTES = 256 * 1024 * 1024

DEFAULT_FIX = "delete it and run `digitlab data fetch` to download a verified copy"


def _bad(name: str, problem: str, fix: str = DEFAULT_FIX) -> DigitlabError:
    """One place that words file errors, so every message names the file."""
    return DigitlabError(f"{name}: {problem}", fix)


def is_gzip(data: bytes) -> bool:
    """Gzip is detected by content, not by file name: mirrors and users rename files."""
    return data[:2] == GZIP_MAGIC


def decompress(data: bytes, name: str, fix: str = DEFAULT_FIX) -> bytes:
    """Return the raw bytes of `data`, gunzipping it if it is gzip (checksums cover raw bytes)."""
    if not is_gzip(data):
        return data
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            raw = fh.read(MAX_RAW_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise _bad(name, f"corrupt gzip data ({exc})", fix) from None
    if len(raw) > MAX_RAW_BYTES:
        raise _bad(name, f"decompresses to more than {MAX_RAW_BYTES} bytes; not an MNIST-style IDX file", fix)
    return raw


def parse_idx(data: bytes, name: str, kind: str | None = None, fix: str = DEFAULT_FIX) -> np.ndarray:
    """Parse raw or gzipped IDX bytes into a writable uint8 array, validating everything.

    Accepts labels (magic 0x0801 -> shape (N,), values 0-9) and images
    (magic 0x0803 -> shape (N, 28, 28)). `kind` ("images" / "labels") additionally
    requires that one; `name` is used in error messages only.
    """
    raw = decompress(data, name, fix)
    if len(raw) < 4:
        raise _bad(name, f"only {len(raw)} bytes; too short for an IDX header (truncated download?)", fix)
    (magic,) = struct.unpack(">I", raw[:4])
    if magic not in (LABELS_MAGIC, IMAGES_MAGIC):  # also rejects non-uint8 types (3rd byte != 0x08)
        raise _bad(
            name,
            f"bad magic number 0x{magic:08x}; expected 0x{LABELS_MAGIC:08x} (uint8 labels) "
            f"or 0x{IMAGES_MAGIC:08x} (uint8 images) - not an MNIST-style IDX file",
            fix,
        )
    found = "labels" if magic == LABELS_MAGIC else "images"
    if kind is not None and kind != found:
        raise _bad(name, f"holds {found} (magic 0x{magic:08x}) but {kind} were expected; files swapped or renamed?", fix)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise _bad(name, f"only {len(raw)} bytes; the {found} header needs {header} (truncated download?)", fix)
    dims = struct.unpack(f">{ndim}I", raw[4:header])  # (N,) or (N, rows, cols)
    if ndim == 3 and dims[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise _bad(name, f"images are {dims[1]}x{dims[2]}; expected {IMAGE_SIDE}x{IMAGE_SIDE}", fix)
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(raw) < expected:
        raise _bad(name, f"truncated: {len(raw)} bytes, but the header promises {expected} for shape {dims}", fix)
    if len(raw) > expected:
        raise _bad(name, f"{len(raw) - expected} extra bytes after the {expected} the header promises for shape {dims}", fix)
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # copy: writable
    if found == "labels" and arr.size:
        bad = np.flatnonzero(arr >= NUM_CLASSES)
        if bad.size:
            raise _bad(name, f"label {int(arr[bad[0]])} at index {int(bad[0])} is outside 0-{NUM_CLASSES - 1} ({bad.size} bad labels)", fix)
    return arr


def encode_idx(arr: np.ndarray) -> bytes:
    """Raw IDX bytes for a uint8 array of shape (N,) or (N, 28, 28); used by tests and tools."""
    arr = np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.ndim not in (1, 3):
        raise ValueError(f"IDX encoding supports 1-D labels or 3-D images, got shape {arr.shape}")
    magic = LABELS_MAGIC if arr.ndim == 1 else IMAGES_MAGIC
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def check_pair(images: np.ndarray, labels: np.ndarray, images_name: str, labels_name: str, fix: str = DEFAULT_FIX) -> None:
    """Images and labels of one split must line up one to one."""
    if images.shape[0] != labels.shape[0]:
        raise DigitlabError(
            f"{images_name} holds {images.shape[0]} images but {labels_name} holds {labels.shape[0]} labels",
            fix.replace("delete it", "delete both files"),
        )
