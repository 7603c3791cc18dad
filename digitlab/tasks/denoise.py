"""Denoising: each image gets one of six noise kinds at a random strength, noised on the fly per
batch; the model returns the clean image and the kind it saw.

Split: the recognition split (55,000 train / 5,000 validation, seeded by split_seed) rather than
R1's 90/10 (docs/reproduction.md), so every task validates on the same images.
Validation noise is drawn once with a fixed seed (metrics compare across epochs); the test split
is the frozen benchmark set of `digitlab bench denoise` (same noisy images, same hash).

task_args: kind_weight (cross-entropy weight, default 0.05), l1_weight (extra L1 term, default 0),
val_limit / test_limit (score only the first N images, for quick CPU studies; 0 = all).

Besides metrics.json a run folder gets `records()`: grad_norms.json (per-layer gradient norms per
epoch) and error_map.json (mean absolute error per pixel on the test images), the two things R1
showed beside PSNR/SSIM; study reports draw them per setting (docs/studies/README.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab import io
from digitlab.config import TrainConfig
from digitlab.data import mnist
from digitlab.data.noise import NOISE_KINDS, sample_noise
from digitlab.engine.grad_norms import GradNorms
from digitlab.tasks import denoise_eval as ev
from digitlab.tasks.base import Outputs, TaskBase, merge_task_args, to_float, train_val_indices

VAL_NOISE_SEED = 7_000_001
TASK_ARGS = {"kind_weight": 0.05, "l1_weight": 0.0, "val_limit": 0, "test_limit": 0}


class DenoiseTask(TaskBase):
    name = "denoise"
    primary_metric = "composite"   # 0.5*PSNR + 0.5*SSIM*100, R1's selection metric (docs/reproduction.md)

    def setup(self, cfg: TrainConfig, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        self.args = merge_task_args(cfg, TASK_ARGS)
        images, _ = mnist.load_split("train", cfg.dataset, cfg.data_dir)
        test_u8, _ = mnist.load_split("test", cfg.dataset, cfg.data_dir)
        train_idx, val_idx = train_val_indices(cfg, len(images))
        self.train_u8 = images[train_idx].to(device)
        val_clean = to_float(images[val_idx])
        val = dict(zip(("noisy", "kinds", "strengths"), ev.noisy_set(val_clean, VAL_NOISE_SEED)), clean=val_clean)
        self.sets = {"val": _limit(val, self.args["val_limit"]),
                     "test": _limit(ev.frozen_test_set(test_u8), self.args["test_limit"])}
        self.grad_norms: GradNorms | None = None

    @property
    def train_size(self) -> int:
        return len(self.train_u8)

    def build_model(self, cfg: TrainConfig) -> nn.Module:
        model = super().build_model(cfg)
        self.grad_norms = GradNorms(model)  # hooks fire only in backward passes, i.e. in training
        return model

    def train_batch(self, index: torch.Tensor, generator: torch.Generator) -> tuple:
        clean = to_float(self.train_u8[index])           # (B,1,28,28)
        noisy, kinds, _ = sample_noise(clean, generator)  # one kind per image, s ~ U[0,1]
        return noisy, clean, kinds

    def step(self, model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
        noisy, clean, kinds = batch
        out, logits = model(noisy)
        mse = F.mse_loss(out.float(), clean)
        loss = mse
        if self.args["l1_weight"]:
            loss = loss + self.args["l1_weight"] * F.l1_loss(out.float(), clean)
        result = {"mse": mse.detach()}
        if self.args["kind_weight"] and ev.has_kind_head(_unwrap(model)):
            ce = F.cross_entropy(logits.float(), kinds)
            loss = loss + self.args["kind_weight"] * ce
            result["kind_acc"] = (logits.argmax(1) == kinds).float().mean()
        return {"loss": loss, **result}

    def predict(self, model: nn.Module, split: str) -> Outputs:
        """{"clean_hat" (N,1,28,28), "probs" (N,6) of the noise kinds, "kind_pred" (N,) or None}."""
        if split == "val" and self.grad_norms is not None:  # validation closes each training epoch
            self.grad_norms.end_epoch()
        clean_hat, probs = ev.run_model(model, self.sets[split]["noisy"], self.cfg.eval_batch_size, self.device)
        kind_pred = probs.argmax(1) if ev.has_kind_head(_unwrap(model)) else None
        return {"clean_hat": clean_hat, "probs": probs, "kind_pred": kind_pred}

    def score(self, outputs: Outputs, split: str) -> dict:
        data = self.sets[split]
        summary = ev.summarize(ev.per_image(outputs["clean_hat"], data["clean"]), data["kinds"], data["strengths"],
                               outputs["kind_pred"])
        if split == "val":  # keep history.jsonl small: per-kind tables only for the test split
            return {k: v for k, v in summary.items() if isinstance(v, float)}
        return {k: v for k, v in summary.items() if k != "n"}

    def records(self, outputs: Outputs) -> dict[str, dict]:
        """grad_norms.json and error_map.json (of the test outputs), figures or not."""
        out = {}
        if self.grad_norms is not None and self.grad_norms.history:
            out["grad_norms.json"] = self.grad_norms.to_json()
        error_map = (outputs["clean_hat"] - self.sets["test"]["clean"]).abs().mean((0, 1))  # (28, 28)
        out["error_map.json"] = {"what": "mean |denoised - clean| per pixel over the test images",
                                 "n": len(self.sets["test"]["clean"]), "mean_abs_error": error_map.tolist()}
        return out

    def write_figures(self, run_dir: Path, outputs: Outputs, test_metrics: dict) -> None:
        from digitlab.report import figures

        data, clean_hat, probs = self.sets["test"], outputs["clean_hat"], outputs["probs"]
        has_kind = outputs["kind_pred"] is not None
        summary = {"n": len(clean_hat), **test_metrics}  # score() dropped only "n"
        out = run_dir / "figures"
        n = min(8, len(clean_hat))
        titles = []
        for i in range(n):
            true = NOISE_KINDS[int(data["kinds"][i])]
            t = f"{true} s={float(data['strengths'][i]):.2f}"
            if has_kind:
                k = int(probs[i].argmax())
                t += f"\nid: {NOISE_KINDS[k]} ({float(probs[i, k]):.2f})"
            titles.append(t)
        figures.plot_image_rows([("noisy", data["noisy"][:n]), ("denoised", clean_hat[:n]), ("clean", data["clean"][:n])],
                                out / "examples.png", col_titles=titles,
                                suptitle="First 8 test images: noisy / denoised / clean (true kind, identified kind)")
        err = (clean_hat - data["clean"]).abs().mean((0, 1))  # (28,28)
        figures.plot_heatmap(err.numpy(), out / "error_heatmap.png",
                             title=f"Mean absolute error per pixel ({len(clean_hat)} test images)",
                             colorbar_label="mean |denoised - clean|")
        if has_kind:
            figures.plot_confusion(summary["kind_confusion"], out / "kind_confusion.png",
                                   class_names=list(NOISE_KINDS), title="Noise kind identification (test)")
        io.write_json(run_dir / "denoise_table.json", summary)
        io.write_text(run_dir / "denoise_table.md",
                      ev.table_markdown(summary, f"Denoising test results ({self.cfg.model}, {summary['n']} images)"))


def _limit(data: dict, n: int) -> dict:
    return {k: (v[:n] if n and isinstance(v, torch.Tensor) else v) for k, v in data.items()}


def _unwrap(model: nn.Module) -> nn.Module:
    """The bare model under DDP / torch.compile wrappers."""
    for attr in ("module", "_orig_mod"):
        model = getattr(model, attr, model)
    return model
