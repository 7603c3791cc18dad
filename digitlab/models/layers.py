"""Small building blocks shared by the models."""

from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.errors import DigitlabError

ACTIVATIONS = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.1, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),  # the same function under R1's name
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}

# MNIST training-set statistics (as R4 uses them); models normalise inside so every caller passes [0, 1] pixels.
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


def make_activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise DigitlabError(
            f"unknown activation {name!r}", f"choose one of: {', '.join(ACTIVATIONS)}"
        )
    return ACTIVATIONS[name]()


class Normalize(nn.Module):
    """(x - mean) / std with constants baked in, so exported models take raw [0, 1] pixels."""

    def __init__(self, mean: float = MNIST_MEAN, std: float = MNIST_STD):
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def conv_bn_act(cin: int, cout: int, act: str, kernel: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        # (kernel - 1) // 2: "same" for odd kernels; an even kernel with stride 2 halves the side exactly.
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False),
        nn.BatchNorm2d(cout),
        make_activation(act),
    )
