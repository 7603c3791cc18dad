"""Loaded models that answer questions about 28x28 digits: shared by `predict`, `eval` and the server."""

from __future__ import annotations

from pathlib import Path

import torch

from digitlab.engine import run as runs
from digitlab.errors import DigitlabError


class Recognizer:
    """A recognition run's best model, ready to classify (B,28,28) float images in [0,1]."""

    def __init__(self, model: torch.nn.Module, meta: dict, run_dir: Path):
        self.model, self.meta, self.run_dir = model, meta, run_dir

    @classmethod
    def from_run(cls, run: str | Path, device: str = "cpu") -> "Recognizer":
        model, meta = runs.load_model(run, device)
        if meta.get("task") != "recognize":
            raise DigitlabError(f"{run} is a {meta.get('task')!r} run, not a recognition run",
                                "pass a run made by `digitlab train recognize`")
        return cls(model, meta, Path(run))

    @torch.inference_mode()
    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """(B,28,28) or (B,1,28,28) float in [0,1] -> (B,10) probabilities."""
        if images.dim() == 3:
            images = images.unsqueeze(1)
        device = next(self.model.parameters()).device
        return self.model(images.to(device).float()).float().softmax(1).cpu()
