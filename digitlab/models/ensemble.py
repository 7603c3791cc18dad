"""Several trained recognisers read as one model: `ensemble`, made by `digitlab ensemble` (digitlab/ensemble.py).

Its output is the log of the members' mean softmax. Those log-probabilities are logits like any
other (softmax gives the mean back), so temperature, abstain thresholds, ONNX export and the server
treat an ensemble as one model; averaging probabilities, not raw logits, keeps one over-confident
member from outvoting the others.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.registry import create, register


class Ensemble(nn.Module):
    def __init__(self, members: list[dict]):
        super().__init__()
        if not members or not all(isinstance(m, dict) and "model" in m for m in members):
            raise ValueError("members must be a non-empty list of {'model': name, 'model_args': {...}}")
        self.members = nn.ModuleList(create(m["model"], "recognize", **m.get("model_args", {})) for m in members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,1,28,28) in [0,1] -> (B,10) log mean probabilities
        probs = torch.stack([m(x).float().softmax(1) for m in self.members]).mean(0)
        return probs.clamp_min(1e-12).log()  # the floor keeps a digit no member believes finite


@register("ensemble", task="recognize")
def ensemble(members: list[dict]) -> nn.Module:
    return Ensemble(list(members))
