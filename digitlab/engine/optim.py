"""Optimiser and learning-rate schedule from a config: the real torch classes, nothing custom."""

from __future__ import annotations

import torch
from torch.optim import lr_scheduler

from digitlab.config import TrainConfig


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    wd = cfg.weight_decay
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=wd)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=wd)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=wd)
    if cfg.optimizer == "adadelta":
        return torch.optim.Adadelta(params, lr=cfg.lr, weight_decay=wd)
    raise AssertionError(cfg.optimizer)  # validated in config


class Schedule:
    """Wraps a torch scheduler and knows when to step it: per batch (cosine, one-cycle),
    per epoch (step) or per epoch on the validation metric (plateau)."""

    def __init__(self, cfg: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int,
                 mode: str = "max"):
        total = cfg.epochs * steps_per_epoch
        self.kind = cfg.schedule
        self.scheduler = None
        if self.kind == "step":
            self.scheduler = lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma)
        elif self.kind == "cosine":
            self.scheduler = lr_scheduler.CosineAnnealingLR(optimizer, T_max=total, eta_min=cfg.min_lr)
        elif self.kind == "onecycle" and total >= 4:
            # OneCycleLR divides by the length of each phase: give the warm-up at least 2 steps.
            pct = min(max(cfg.warmup_frac, 2 / total), 1 - 2 / total)
            self.scheduler = lr_scheduler.OneCycleLR(optimizer, max_lr=cfg.lr, total_steps=total,
                                                     pct_start=pct)
        elif self.kind == "onecycle":
            self.kind = "none"  # fewer than 4 steps in all: no room for a cycle, keep lr constant
        elif self.kind == "plateau":
            self.scheduler = lr_scheduler.ReduceLROnPlateau(
                optimizer, mode=mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience,
                min_lr=cfg.min_lr)

    def after_batch(self) -> None:
        if self.kind in ("cosine", "onecycle"):
            self.scheduler.step()

    def after_epoch(self, val_metric: float) -> None:
        if self.kind == "step":
            self.scheduler.step()
        elif self.kind == "plateau":
            self.scheduler.step(val_metric)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler and state:
            self.scheduler.load_state_dict(state)
