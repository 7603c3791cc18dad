"""Request and response bodies of the JSON API; the app's OpenAPI schema (/docs) is built from these."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

MAX_BATCH = 256  # images per /api/recognize/batch request
MAX_CANVAS_SIDE = 1000  # pixels per side of a /canvas drawing (the page sends 140x140)

Pixel = Annotated[float, Field(allow_inf_nan=False)]
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
Pixels = Annotated[list[Row], Field(min_length=28, max_length=28,
                                    description="28 rows of 28 numbers, in [0, 1] or [0, 255]")]
Image28 = Annotated[list[list[float]], Field(description="28x28 values in [0, 1], white ink on black")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PixelsRequest(_Strict):
    pixels: Pixels
    normalize: bool = Field(True, description="apply MNIST's crop/size/centre preprocessing (as `predict` does); "
                                              "false feeds the grid as is")


class BatchRequest(_Strict):
    images: list[Pixels] = Field(min_length=1, max_length=MAX_BATCH)
    normalize: bool = True


class DenoiseRequest(_Strict):
    pixels: Pixels
    noise: str = Field("gaussian", description="noise kind to add, or 'none'")
    strength: float = Field(0.5, ge=0, le=1)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    already_noisy: bool = Field(False, description="the image is already noisy: add nothing, denoise it as is")


class CompareRequest(_Strict):
    a: Pixels
    b: Pixels
    normalize: bool = True


class Canvas(_Strict):
    """A drawing's grayscale pixels, one byte each, row by row, base64-encoded.

    The server prepares it like an uploaded image (crop to the ink, fit 20x20, centre by mass), so
    send the drawing as drawn, only shrunk if large: shrinking it to 28x28 yourself skips that.
    """

    width: int = Field(ge=1, le=MAX_CANVAS_SIDE)
    height: int = Field(ge=1, le=MAX_CANVAS_SIDE)
    gray: str = Field(max_length=4 * -(-MAX_CANVAS_SIDE ** 2 // 3),  # base64 of the largest drawing
                      description="width*height bytes (0 black .. 255 white; dark or light ink), base64")
    _bytes: bytes = PrivateAttr(b"")

    @field_validator("gray")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            base64.b64decode(value, validate=True)
        except binascii.Error as e:  # also non-alphabet characters: validate=True refuses, not skips them
            raise ValueError(f"is not valid base64 ({e}); encode the bytes with btoa or base64.b64encode") from None
        return value

    @model_validator(mode="after")
    def _one_byte_per_pixel(self) -> "Canvas":
        self._bytes = base64.b64decode(self.gray)
        if len(self._bytes) != self.width * self.height:
            raise ValueError(f"gray holds {len(self._bytes):,} bytes, but width x height is {self.width}x"
                             f"{self.height} = {self.width * self.height:,}; send one byte per pixel")
        return self

    def image(self) -> np.ndarray:
        """(height, width) float32 in [0, 1]."""
        return np.frombuffer(self._bytes, np.uint8).reshape(self.height, self.width).astype(np.float32) / 255


class CompareCanvasRequest(_Strict):
    a: Canvas
    b: Canvas


class RunnerUp(BaseModel):
    digit: int
    probability: float


class Recognition(BaseModel):
    digit: int = Field(description="the most probable digit (see `abstain` before trusting it)")
    probability: float = Field(description="its calibrated probability")
    abstain: Literal["unsure", "not_a_digit"] | None = Field(
        None, description="null: a confident answer; 'unsure': two digits compete; 'not_a_digit': fits no digit")
    message: str = Field(description="what to show: '7', 'not sure: 1 or 7?' or 'not a digit'")
    runner_up: RunnerUp
    probabilities: list[float] = Field(description="10 calibrated probabilities, digit 0 to 9")
    input: Image28 = Field(description="the 28x28 image the model saw")


class RecognizeResponse(Recognition):
    run: str


class BatchResponse(BaseModel):
    run: str
    results: list[Recognition]


class DenoiseResponse(BaseModel):
    run: str
    clean: Image28 | None = Field(description="the prepared digit before noise (null for an already noisy image)")
    noisy: Image28
    denoised: Image28
    noise_added: str
    strength: float
    kind: str = Field(description="the noise kind the model identified")
    kind_probabilities: dict[str, float]


class CompareResponse(BaseModel):
    run: str
    same_probability: float = Field(description="probability that both images show the same digit")
    a: Image28
    b: Image28


class ModelInfo(BaseModel):
    task: str
    run: str
    name: str
    model: str | None
    model_args: dict
    params: int | None
    runtime: str
    metrics: dict[str, float | int]


class ModelsResponse(BaseModel):
    runtime: str
    models: list[ModelInfo]
    missing: dict[str, str] = Field(description="tasks with no model, and how to train one")
    limits: dict[str, int]
    noise_kinds: list[str]


class Health(BaseModel):
    status: str
    tasks: list[str]


class ErrorResponse(BaseModel):
    error: str
    fix: str
