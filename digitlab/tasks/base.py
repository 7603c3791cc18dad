"""What a task must provide so the one training loop can train it.

The loop never asks which task it trains: it draws index batches, asks the task to turn them
into tensors, calls `step` for the loss, and `evaluate` for validation metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
import torch.nn as nn

from digitlab.config import TrainConfig


class Task(Protocol):
    name: str
    primary_metric: str        # key in evaluate()'s result used for model selection, e.g. "acc"
    primary_mode: str          # "max" or "min"

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        """Load data into memory (on `device`) and fix the train/val/test splits."""

    @property
    def train_size(self) -> int:
        """Number of training examples an epoch walks through."""

    def build_model(self, cfg: TrainConfig) -> nn.Module: ...

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """Tensors for one training batch from positions in the training split (augmented)."""

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        """Forward pass: {"loss": scalar to minimise, other scalar metrics to log (e.g. "acc")}."""

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """Metrics on "val" or "test" (floats, or lists such as per-class accuracy)."""

    def finish(self, model: nn.Module, run_dir: Path, test_metrics: dict) -> None:
        """Write the task's figures for the final model."""


def get_task(name: str) -> Task:
    if name == "recognize":
        from digitlab.tasks.recognize import RecognizeTask
        return RecognizeTask()
    if name == "denoise":
        from digitlab.tasks.denoise import DenoiseTask
        return DenoiseTask()
    if name == "compare":
        from digitlab.tasks.compare import CompareTask
        return CompareTask()
    raise KeyError(name)
