"""Digit recognition: images in, 10 class logits out, cross-entropy, accuracy per class.

task_args (all optional; defaults in TASK_ARGS):
    junk_weight     weight of the outlier-exposure term (0 = off): on generated "not a digit"
                    images (data/junk.py) the cross-entropy to the uniform distribution, so the
                    model learns to spread its probability over all ten digits for non-digits
    junk_fraction   junk images per digit image in each batch (0.25: 32 junk per 128 digits)
    junk_size       junk images generated once per run (a mix of data/junk.py's families), on the device
    junk_families   which families to train on (default all; "fashion" needs Fashion-MNIST)
    reject_fraction, unsure_fraction   validation quantiles for the abstain thresholds (calibrate.py)

Every run ends with a calibration fitted on validation (temperature + abstain thresholds), stored
in model.json under "calibration" for digitlab.verdict.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab import calibrate
from digitlab.config import TrainConfig
from digitlab.data import junk, mnist
from digitlab.data.augment import AugmentConfig, augment
from digitlab.errors import DigitlabError
from digitlab.models import registry

TASK_ARGS = {"junk_weight": 0.0, "junk_fraction": 0.25, "junk_size": 10_000, "junk_families": list(junk.FAMILIES),
             "reject_fraction": calibrate.REJECT_FRACTION, "unsure_fraction": calibrate.UNSURE_FRACTION}


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
        # Keys read with defaults; checking for unknown keys is config.py's job (strict validation).
        self.cfg, self.device = cfg, device
        self.args = {**TASK_ARGS, **cfg.task_args}
        self.splits = load_splits(cfg, device)
        self.junk = self._make_junk() if float(self.args["junk_weight"]) > 0 else None
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

    def _make_junk(self) -> torch.Tensor:
        """The run's "not a digit" images, generated once (seeded by the run's seed) from the training
        digits and Fashion-MNIST's train split; uint8 on the device, drawn from per batch."""
        families = tuple(self.args["junk_families"] or ())
        bad = [f for f in families if f not in junk.FAMILIES]
        if bad or not families:
            raise DigitlabError(f"task_args.junk_families {list(families)}: {'unknown ' + str(bad) if bad else 'empty'}",
                                f"use one or more of: {', '.join(junk.FAMILIES)}")
        fashion = mnist.load_split("train", "fashion-mnist")[0] if "fashion" in families else None
        images = junk.make_mix(int(self.args["junk_size"]), self.cfg.seed, self.splits["train"][0].cpu(), fashion, families)
        return images.to(self.device)

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """(images, labels): with outlier exposure the junk images follow the digits in `images`
        (len(images) > len(labels)), augmented alike so style alone never tells them apart."""
        images, labels = self.splits["train"]
        x, y = to_float(images[index]), labels[index]
        style_labels = y  # what label-aware augmentation (continental 1s and 7s) reads; -1: junk
        if self.junk is not None:
            n = max(1, round(len(index) * float(self.args["junk_fraction"])))
            pick = torch.randint(len(self.junk), (n,), generator=generator, device=self.junk.device)
            x = torch.cat([x, to_float(self.junk[pick])])
            style_labels = torch.cat([y, y.new_full((n,), -1)])
        if self.augment_cfg is not None:
            x = augment(x, self.augment_cfg, generator, labels=style_labels)
        return x.contiguous(memory_format=self.memory_format), y

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        x, y = batch
        logits = model(x)
        junk_logits, logits = logits[len(y):], logits[:len(y)]
        loss = F.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        out = {"acc": (logits.argmax(1) == y).float().mean()}
        if len(junk_logits):
            out["junk"] = uniform_kl(junk_logits)
            loss = loss + float(self.args["junk_weight"]) * out["junk"]
        return {"loss": loss, **out}

    @torch.inference_mode()
    def predict_logits(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """uint8 (N,28,28) on the device -> float logits (N,10) on the CPU, in eval mode."""
        model.eval()
        out = []
        for start in range(0, len(images), self.cfg.eval_batch_size):
            x = to_float(images[start:start + self.cfg.eval_batch_size]).contiguous(memory_format=self.memory_format)
            out.append(model(x).float().cpu())
        return torch.cat(out)

    def predict_split(self, model: nn.Module, split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(probabilities (N,10), predictions (N,), labels (N,)) on the CPU."""
        images, labels = self.splits[split]
        p = self.predict_logits(model, images).softmax(1)
        return p, p.argmax(1), labels.cpu()

    def model_meta(self, model: nn.Module) -> dict:
        """model.json's "calibration": temperature and abstain thresholds fitted on validation."""
        images, labels = self.splits["val"]
        return {"calibration": calibrate.fit(self.predict_logits(model, images), labels.cpu(),
                                             float(self.args["reject_fraction"]), float(self.args["unsure_fraction"]))}

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


def uniform_kl(logits: torch.Tensor) -> torch.Tensor:
    """Mean KL(uniform || softmax(logits)) = cross-entropy to the uniform distribution - log K
    (Hendrycks et al. 2019, outlier exposure): 0 when the output is flat, the gradient is the
    cross-entropy's. In float32, as autocast keeps log_softmax."""
    log_p = logits.float().log_softmax(1)
    return -log_p.mean(1).mean() - math.log(logits.shape[1])


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(K,K) counts, rows = true class, columns = predicted."""
    return torch.bincount(labels * classes + preds, minlength=classes * classes).reshape(classes, classes)


def classification_metrics(probs: torch.Tensor, preds: torch.Tensor, labels: torch.Tensor) -> dict:
    cm = confusion_matrix(preds, labels)
    per_class = (cm.diag().float() / cm.sum(1).clamp(min=1).float()).tolist()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), labels).item()
    return {"loss": nll, "acc": (preds == labels).float().mean().item(), "per_class_acc": per_class}
