"""What a task must provide so the one training loop can train it, and the plumbing tasks share.

The loop never asks which task it trains: it draws index batches, asks the task to turn them
into tensors, calls `step` for the loss and `evaluate` for validation metrics. At the end it
runs `predict` on the test split once; `score` turns those outputs into the test metrics and,
after training, `write_figures` draws them, so the test split is never passed twice.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn as nn

from digitlab.config import TrainConfig
from digitlab.data.augment import AugmentConfig
from digitlab.errors import DigitlabError
from digitlab.models import registry

Outputs = dict[str, Any]  # what a model produced on a split: tensors on the CPU, named per task


class Task(Protocol):
    name: str
    primary_metric: str        # key in evaluate()'s result used for model selection, e.g. "acc"
    primary_mode: str          # "max" or "min"

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        """Load data into memory (on `device`) and fix the train/val/test splits."""

    @property
    def train_size(self) -> int:
        """Number of training examples an epoch walks through."""

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        """The model of `cfg`, which must be one of this task's (models/registry.py)."""

    def example_input(self) -> tuple[torch.Tensor, ...]:
        """Arguments of one forward pass on one example (CPU), to count its FLOPs."""

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """Tensors for one training batch from positions in the training split (augmented)."""

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        """Forward pass: {"loss": scalar to minimise, other scalar metrics to log (e.g. "acc")}."""

    def predict(self, model: nn.Module, split: str) -> Outputs:
        """The model's outputs on "val" or "test", in eval mode (the model's mode is restored)."""

    def score(self, outputs: Outputs, split: str) -> dict:
        """Metrics of `predict`'s outputs (floats, or lists such as per-class accuracy)."""

    def evaluate(self, model: nn.Module, split: str) -> dict:
        """score(predict(model, split), split)."""

    def model_meta(self, model: nn.Module) -> dict:
        """What the task adds to model.json for the final model (recognize: its calibration)."""

    def records(self, outputs: Outputs) -> dict[str, dict]:
        """Extra JSON files for the run folder, from the test outputs (denoise: grad_norms.json,
        error_map.json), written whether or not figures are drawn."""

    def write_figures(self, run_dir: Path, outputs: Outputs, test_metrics: dict) -> None:
        """Write the task's figures (and tables) of the final model's test outputs."""


class TaskBase:
    """The parts of Task that are the same for every task; a task overrides what differs."""

    name: str
    primary_mode = "max"  # every task so far selects on a score where higher is better

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return registry.create(cfg.model, task=self.name, **cfg.model_kwargs())

    def example_input(self) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(1, 1, 28, 28),)

    def evaluate(self, model: nn.Module, split: str) -> dict:
        return self.score(self.predict(model, split), split)

    def model_meta(self, model: nn.Module) -> dict:
        return {}

    def records(self, outputs: Outputs) -> dict[str, dict]:
        return {}


TASK_MODULES = {"recognize": "RecognizeTask", "denoise": "DenoiseTask", "compare": "CompareTask"}


def get_task(name: str) -> Task:
    """A fresh task object by name; its module is imported only now (each pulls in its own deps)."""
    if name not in TASK_MODULES:
        raise KeyError(name)
    return getattr(importlib.import_module(f"digitlab.tasks.{name}"), TASK_MODULES[name])()


# --------------------------------------------------------------------------- shared data plumbing

def split_indices(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training images split once, seeded, into train / validation (55,000 / 5,000 for MNIST):
    every task validates on the same images."""
    if not 0 < val_size < n:
        raise DigitlabError(f"val_size {val_size} must be between 1 and {n - 1} (the training split has {n} images)",
                            f"set val_size from 1 to {n - 1}, e.g. --set val_size={max(1, min(5000, n // 10))}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[val_size:], perm[:val_size]


def train_val_indices(cfg: TrainConfig, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """split_indices, then the first `cfg.subset` of the training part (at least one image)."""
    train_idx, val_idx = split_indices(n, cfg.val_size, cfg.split_seed)
    if cfg.subset < 1.0:
        train_idx = train_idx[: max(1, int(round(cfg.subset * len(train_idx))))]
    return train_idx, val_idx


def merge_task_args(cfg: TrainConfig, defaults: dict) -> dict:
    """cfg.task_args over the task's defaults. An unknown key is an error here too, for configs
    built without config.validate (which reports it first for every config it resolves)."""
    unknown = set(cfg.task_args) - set(defaults)
    if unknown:
        raise DigitlabError(f"unknown {cfg.task} task_args {sorted(unknown)}",
                            f"use task_args.KEY with KEY one of: {', '.join(defaults)}")
    return {**defaults, **cfg.task_args}


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(B,28,28) uint8 -> (B,1,28,28) float in [0,1]. Kept uint8 in memory: 4x smaller."""
    return images_u8.unsqueeze(1).float().div_(255.0)


def augmentation(cfg: TrainConfig) -> AugmentConfig | None:
    """The run's AugmentConfig, or None when it would change nothing."""
    aug = AugmentConfig(**cfg.augment) if cfg.augment else None
    return aug if aug is not None and aug.enabled() else None
