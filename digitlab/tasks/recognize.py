"""Digit recognition: images in, 10 class logits out, cross-entropy, accuracy per class.

task_args (all optional; defaults in TASK_ARGS):
    junk_weight     weight of the outlier-exposure term (0 = off): on generated "not a digit"
                    images (data/junk.py) the cross-entropy to the uniform distribution, so the
                    model learns to spread its probability over all ten digits for non-digits
    junk_fraction   junk images per digit image in each batch (0.25: 32 junk per 128 digits)
    junk_size       junk images generated once per run (a mix of data/junk.py's families), on the device
    junk_families   which families to train on (default all; "fashion" needs Fashion-MNIST)
    junk_mix        {family: share} overriding data/junk.py's TRAIN_MIX, e.g. {two_digits: 0.3}
    shift_replay    share of each batch's digits replaced, after augmentation, by the same training digit
                    sent through one of `digitlab bench shift`'s shifts and prepared by to_mnist
                    (data/shift.py::mix, made once per run): the preprocessed look a user's digit has
    shift_replay_weights  {shift: relative weight} for the drawing (1 when not named, 0 leaves it out)
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
from digitlab.data.augment import augment
from digitlab.errors import DigitlabError
from digitlab.extras import require
from digitlab.tasks.base import Outputs, TaskBase, augmentation, merge_task_args, to_float, train_val_indices

TASK_ARGS = {"junk_weight": 0.0, "junk_fraction": 0.25, "junk_size": 10_000, "junk_families": list(junk.FAMILIES),
             "junk_mix": {}, "shift_replay": 0.0, "shift_replay_weights": {},
             "reject_fraction": calibrate.REJECT_FRACTION, "unsure_fraction": calibrate.UNSURE_FRACTION}


def load_splits(cfg: TrainConfig, device: torch.device) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"train", "val", "test"}: (uint8 images, int64 labels) on `device`."""
    images, labels = mnist.load_split("train", cfg.dataset, cfg.data_dir)
    test_x, test_y = mnist.load_split("test", cfg.dataset, cfg.data_dir)
    train_idx, val_idx = train_val_indices(cfg, len(images))
    return {
        "train": (images[train_idx].to(device), labels[train_idx].to(device)),
        "val": (images[val_idx].to(device), labels[val_idx].to(device)),
        "test": (test_x.to(device), test_y.to(device)),
    }


class RecognizeTask(TaskBase):
    name = "recognize"
    primary_metric = "acc"

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.args = merge_task_args(cfg, TASK_ARGS)
        self.splits = load_splits(cfg, device)
        self._junk: torch.Tensor | None = None  # made at the first training batch (`junk`)
        self._replay: torch.Tensor | None = None  # likewise (`replay`)
        self._val_logits: tuple[list[torch.Tensor], torch.Tensor] | None = None  # (weights, logits) of the last val pass
        if float(self.args["junk_weight"]) > 0:
            self._check_junk_families()
        self._check_replay()
        self.augment_cfg = augmentation(cfg)
        # channels_last lets oneDNN / cuDNN pick faster convolution kernels.
        self.memory_format = torch.channels_last

    @property
    def train_size(self) -> int:
        return len(self.splits["train"][1])

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        return super().build_model(cfg).to(memory_format=self.memory_format)

    def _check_junk_families(self) -> None:
        families = tuple(self.args["junk_families"] or ())
        bad = [f for f in families if f not in junk.FAMILIES]
        if bad or not families:
            raise DigitlabError(f"task_args.junk_families {list(families)}: {'unknown ' + str(bad) if bad else 'empty'}",
                                f"use one or more of: {', '.join(junk.FAMILIES)}")
        mix = self.args["junk_mix"]
        valid = isinstance(mix, dict) and all(f in junk.FAMILIES and _is_share(v) for f, v in mix.items())
        if not valid or not junk.shares(families, mix):
            raise DigitlabError(f"task_args.junk_mix {mix!r}: needs {{family: share >= 0}}, some family of "
                                f"junk_families above 0", f"e.g. {{two_digits: 0.3}}; families: {', '.join(junk.FAMILIES)}")

    @property
    def junk(self) -> torch.Tensor | None:
        """The run's "not a digit" images (None without outlier exposure), generated at the first
        training batch (seeded by the run's seed: evaluating or redrawing a run never pays for them)
        from the training digits and Fashion-MNIST's train split; uint8 on the device."""
        if self._junk is None and float(self.args["junk_weight"]) > 0:
            self._junk = self._make_junk()
        return self._junk

    def _make_junk(self) -> torch.Tensor:
        families = tuple(self.args["junk_families"])
        fashion = mnist.load_split("train", "fashion-mnist")[0] if "fashion" in families else None
        images = junk.make_mix(int(self.args["junk_size"]), self.cfg.seed, self.splits["train"][0].cpu(), fashion, families,
                               self.args["junk_mix"])
        return images.to(self.device)

    def _check_replay(self) -> None:
        share = self.args["shift_replay"]
        if not (_is_share(share) and share <= 1):
            raise DigitlabError(f"task_args.shift_replay {share!r}: needs a share in [0, 1]",
                                "e.g. task_args.shift_replay=0.2, or 0 for none")
        if share > 0:
            require("baselines", "task_args.shift_replay")  # the shifts' morphology: scikit-image, scipy
            from digitlab.data import shift

            try:  # a bad weight fails before training, not at the first batch
                shift.mix_weights(self.args["shift_replay_weights"])
            except DigitlabError as e:
                raise DigitlabError(f"task_args.shift_replay_weights: {e.problem}", e.fix) from None

    @property
    def replay(self) -> torch.Tensor | None:
        """The training digits, each through one shift and to_mnist (None without shift_replay),
        made at the first training batch from the run's seed: uint8 on the device, in the order of
        the training split."""
        if self._replay is None and float(self.args["shift_replay"]) > 0:
            from digitlab.data import shift

            images, labels = self.splits["train"]
            floats = images.cpu().float().div_(255).numpy()  # float32: half float64's 350 MB for MNIST
            mixed = shift.mix(floats, labels.cpu().numpy(), self.cfg.seed, self.args["shift_replay_weights"])
            self._replay = torch.from_numpy((mixed * 255).round().astype("uint8")).to(self.device)
        return self._replay

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        """(images, labels): with outlier exposure the junk images follow the digits in `images`
        (len(images) > len(labels)), augmented alike so style alone never tells them apart; with
        shift replay a share of the digits is then swapped for their replayed form."""
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
        if self.replay is not None:  # after augmentation: a replayed digit already looks as a user's would
            on = torch.rand(len(index), generator=generator, device=generator.device).to(index.device)
            on = on < float(self.args["shift_replay"])
            x[:len(index)][on] = to_float(self.replay[index[on]])
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
        logits = self.predict_logits(model, images)
        if split == "val":  # kept for model_meta: the final model is often the one validated last
            self._val_logits = (_weights(model), logits)
        p = logits.softmax(1)
        return p, p.argmax(1), labels.cpu()

    def model_meta(self, model: nn.Module) -> dict:
        """model.json's "calibration": temperature and abstain thresholds fitted on validation.
        The validation logits of the last epoch are reused when they came from these very weights
        (one epoch, or the best epoch was the last): a pass over 5,000 images is ~3% of recognize-fast."""
        images, labels = self.splits["val"]
        seen, logits = self._val_logits or (None, None)
        if seen is None or not _same_weights(seen, _weights(model)):
            logits = self.predict_logits(model, images)
        return {"calibration": calibrate.fit(logits, labels.cpu(),
                                             float(self.args["reject_fraction"]), float(self.args["unsure_fraction"]))}

    def predict(self, model: nn.Module, split: str) -> Outputs:
        was_training = model.training
        probs, preds, labels = self.predict_split(model, split)
        model.train(was_training)
        return {"probs": probs, "preds": preds, "labels": labels}

    def score(self, outputs: Outputs, split: str) -> dict:
        return classification_metrics(outputs["probs"], outputs["preds"], outputs["labels"])

    def write_figures(self, run_dir: Path, outputs: Outputs, test_metrics: dict) -> None:
        from digitlab.report import figures

        probs, preds, labels = outputs["probs"], outputs["preds"], outputs["labels"]
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


def _weights(model: nn.Module) -> list[torch.Tensor]:
    """A copy of the model's weights and buffers, to tell later whether they changed."""
    return [t.detach().cpu().clone() for t in model.state_dict().values()]


def _is_share(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf


def _same_weights(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b))


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
