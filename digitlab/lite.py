"""The recogniser without torch: a run's `model.onnx` on ONNX Runtime, for a fast cold start.

`import torch` alone takes about 2 s on a 2-core laptop, more than a user should wait for one
`digitlab predict my.png`. numpy, Pillow and onnxruntime load in about 0.5 s together, so when the
model folder holds an up-to-date model.onnx (the shipped recogniser always does; `digitlab export
RUN` writes one into a run) and onnxruntime is installed, `predict` answers through this module.
Preprocessing and the verdict are the same functions the torch path uses (`preprocess`, `verdict`);
`digitlab export` checks the ONNX logits against PyTorch's on 1,000 test images, so the answers agree.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Sequence

import numpy as np

from digitlab import pretrained, runfolder, verdict
from digitlab.data import preprocess
from digitlab.verdict import Reading


def available(folder: str | Path) -> bool:
    """True when FOLDER's recogniser can run here without torch."""
    folder = Path(folder)
    return (folder / "model.safetensors").is_file() and onnx_is_fresh(folder, folder / "model.onnx") \
        and importlib.util.find_spec("onnxruntime") is not None


def onnx_is_fresh(folder: Path, onnx: Path) -> bool:
    """ONNX file `onnx` exists and holds FOLDER's current weights.

    A shipped model's two files are pinned by their SHA-256 (tests/test_pretrained.py); their mtimes
    are only the install's unpacking order. A run's model.onnx is stale once training rewrote the weights.
    """
    weights = folder / "model.safetensors"
    return onnx.is_file() and (pretrained.is_shipped(folder) or not weights.is_file()
                               or onnx.stat().st_mtime >= weights.stat().st_mtime)


class LiteRecognizer:
    """A recognition run folder's model.onnx; the same `prepare` / `logits` / `calibration` as
    `digitlab.api.Recognizer`, on numpy arrays."""

    def __init__(self, folder: str | Path, threads: int = 1):
        import onnxruntime as ort

        self.folder = Path(folder)
        self.meta = runfolder.read_model_meta(self.folder, task="recognize")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads  # one image is a few MFLOP: threads cost more than they give
        opts.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(self.folder / "model.onnx"), opts,
                                            providers=["CPUExecutionProvider"])

    @property
    def calibration(self) -> verdict.Calibration:
        return verdict.Calibration.from_meta(self.meta)

    def prepare(self, paths: Sequence[str | Path]) -> np.ndarray:
        """Image files -> (N, 28, 28) float32, MNIST's preprocessing; errors name the file."""
        return np.stack([preprocess.to_mnist_array(preprocess.load_image(p)) for p in paths])

    def logits(self, images: np.ndarray) -> np.ndarray:
        """(N, 28, 28) MNIST-prepared images in [0, 1] -> (N, 10) logits."""
        x = np.ascontiguousarray(images, dtype=np.float32)[:, None]
        return self.session.run(["logits"], {"image": x})[0]

    def read(self, paths: Sequence[str | Path]) -> tuple[np.ndarray, list[Reading]]:
        inputs = self.prepare(paths)
        return inputs, verdict.read(self.logits(inputs), self.calibration)
