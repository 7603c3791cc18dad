"""Digit recognition: images in, 10 class logits out, cross-entropy, accuracy per class."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab.config import TrainConfig
from digitlab.data import mnist
from digitlab.data.augment import AugmentConfig, augment
from digitlab.errors import DigitlabError
from digitlab.models import registry


def split_indices(n: int, val_size: int, split_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """benchmarks.md: the training images split once, seeded, into train / validation."""
    if not 0 < val_size < n:
        raise DigitlabError(f"val_size {val_size} must be between 1 and {n - 1}", "set val_size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    return perm[val_size:], perm[:val_size]


def to_float(images_u8: torch.Tensor) -> torch.Tensor:
    """(B,28,28) uint8 -> (B,1,28,28) float in [0,1]. Kept uint8 in memory: 4x smaller."""
    return images_u8.unsqueeze(1).float().div_(255.0)


def load_splits(cfg: TrainConfig, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"}: (uint8 images, int64 labels) on `device`."""
    images, labels = mnist.load_split("train", cfg.dataset, cfg.data_dir)
    test_x, test_y = mnist.load_split("test", cfg.dataset, cfg.data_dir)
    train_idx, val_idx = split_indices(len(images), cfg.val_size, cfg.split_seed)
    if cfg.subset < 1.0:
        train_idx = train_idx[: max(1, int(round(cfg.subset * len(train_idx))))]
    return {
        "train": (images[train_idx].to(device), labels[train_idx].to(device)),
        "val": (images[val_idx].to(device), labels[val_idx].to(device)),
        "test": (test_x.to(device), test_y.to(device)),
    }


class RecognizeTask:
    name = "recognize"
    primary_metric = "acc"
    primary_mode = "max"

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.splits = load_splits(cfg, device)
        self.augment_cfg = AugmentConfig(**cfg.augment) if cfg.augment else None
        if self.augment_cfg is not None and not self.augment_cfg.enabled():
            self.augment_cfg = None
        # channels_last lets oneDNN / cuDNN pick faster convolution kernels.
        self.memory_format = torch.channels_last

    @property
    def train_size(self) -> int:
        return len(self.splits["train"][1])

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        if cfg.model not in registry.list_models("recognize"):
            raise DigitlabError(f"model {cfg.model!r} is not a recognition model",
                                f"use one of: {', '.join(registry.list_models('recognize'))}")
        return registry.create(cfg.model, **cfg.model_kwargs()).to(memory_format=self.memory_format)

    def example_input(self) -> tuple[torch.Tensor]:
        return (torch.zeros(1, 1, 28, 28),)

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        images, labels = self.splits["train"]
        x = to_float(images[index])
        if self.augment_cfg is not None:
            x = augment(x, self.augment_cfg, generator, labels=labels[index])
        return x.contiguous(memory_format=self.memory_format), labels[index]

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        return {"loss": loss, "acc": (logits.argmax(1) == y).float().mean()}

    @torch.inference_mode()
    def predict_split(self, model: nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities (N,10), predictions (N,), labels (N,)) on the CPU."""
        images, labels = self.splits[split]
        model.eval()
        probs = []
        for start in range(0, len(labels), self.cfg.eval_batch_size):
            x = to_float(images[start:start + self.cfg.eval_batch_size]).contiguous(memory_format=self.memory_format)
            probs.append(model(x).float().softmax(1).cpu())
        p = torch.cat(probs)
        return p, p.argmax(1), labels.cpu()

    def evaluate(self, model: nn.Module, split: str) -> dict:
        was_training = model.training
        probs, preds, labels = self.predict_split(model, split)
        model.train(was_training)
        self._last = (split, probs, preds, labels)
        return classification_metrics(probs, preds, labels)

    def finish(self, model: nn.Module, run_dir: Path, test_metrics: dict) -> None:
        from digitlab.report import figures

        split, probs, preds, labels = self._last if self._last[0] == "test" else (
            "test", *self.predict_split(model, "test"))
        out = run_dir / "figures"
        figures.plot_confusion(confusion_matrix(preds, labels), out / "confusion.png",
                               title="Test confusion matrix")
        figures.plot_per_class(test_metrics["per_class_acc"], out / "per_class.png",
                               title="Test accuracy per digit")
        wrong = (preds != labels).nonzero().flatten()[:48]
        if len(wrong):
            images = self.splits["test"][0][wrong.to(self.device)].cpu()
            titles = [f"true {labels[i]} / pred {preds[i]} ({probs[i, preds[i]]:.2f})" for i in wrong.tolist()]
            figures.plot_image_grid(images, out / "misclassified.png", titles,
                                    suptitle=f"Misclassified test digits ({int((preds != labels).sum())} of {len(labels)})")


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(K,K) counts, rows = true class, columns = predicted."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def classification_metrics(probs: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> dict:
    cm = confusion_matrix(preds, labels)
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1).float()).tolist()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return {"loss": nll, "acc": (preds == labels).float().mean().item(), "per_class_acc": per_class}
