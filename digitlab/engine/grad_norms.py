"""Per-layer gradient norms during training, recorded by parameter hooks (the loop needs no change).

A layer is a top-level child of the model, or one entry of a top-level ModuleList (`down.0`,
`dec.1`). For each epoch the monitor keeps the root mean square over the epoch's steps of the
layer's gradient norm, sqrt(mean over steps of the sum over its parameters of ||grad||^2), taken
before any clipping. Vanishing or exploding gradients show as layers far below or above the rest
(docs/studies/README.md shows these per setting for the U-Net studies).
"""

from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn


def layer_name(model: nn.Module, param_name: str) -> str:
    """'down.0.1.weight' -> 'down.0' (a ModuleList entry); 'bottleneck.0.weight' -> 'bottleneck'."""
    parts = param_name.split(".")
    if len(parts) > 2 and isinstance(getattr(model, parts[0], None), nn.ModuleList):
        return ".".join(parts[:2])
    return parts[0] if len(parts) > 1 else "(model)"


class GradNorms:
    """Attach to a model once; call `end_epoch()` after each epoch's steps; read `history`."""

    def __init__(self, model: nn.Module):
        self.layers: list[str] = []
        self._squares: dict[str, torch.Tensor | float] = {}
        self._steps: dict[str, int] = {}
        self.history: list[dict[str, float]] = []
        for name, param in model.named_parameters():
            if not param.requires_grad:
                continue
            layer = layer_name(model, name)
            first = layer not in self._squares
            if first:
                self.layers.append(layer)
                self._squares[layer], self._steps[layer] = 0.0, 0
            # The layer's first parameter counts the steps; every parameter adds its squared norm.
            param.register_hook(partial(self._add, layer, first))

    def _add(self, layer: str, counts_step: bool, grad: torch.Tensor) -> None:
        self._squares[layer] = self._squares[layer] + grad.detach().float().pow(2).sum()
        if counts_step:
            self._steps[layer] += 1

    def end_epoch(self) -> dict[str, float]:
        """The finished epoch's RMS gradient norm per layer (layers without a step are left out)."""
        record = {layer: math.sqrt(float(self._squares[layer]) / self._steps[layer])
                  for layer in self.layers if self._steps[layer]}
        self.history.append(record)
        self._squares = {layer: 0.0 for layer in self.layers}
        self._steps = {layer: 0 for layer in self.layers}
        return record

    def to_json(self) -> dict:
        return {"what": "RMS over each epoch's steps of the per-layer gradient norm (before clipping)",
                "layers": self.layers, "epochs": self.history}
