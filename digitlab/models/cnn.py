"""Plain convolutional classifiers: R3's small CNN (docs/reproduction.md) and digitlab's own DigitNet."""

from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.layers import Normalize, conv_bn_act, make_activation
from digitlab.models.registry import register


@register("cnn_r3", task="recognize")
def cnn_r3(activation: str = "relu") -> nn.Module:
    """R3 exactly: conv5x5 1->10, act, pool2, conv5x5 10->20, act, pool2, flatten 320, linear 10."""
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 10, 5), make_activation(activation), nn.MaxPool2d(2),   # (B,10,12,12)
        nn.Conv2d(10, 20, 5), make_activation(activation), nn.MaxPool2d(2),  # (B,20,4,4)
        nn.Flatten(),
        nn.Linear(320, 10),
    )


class DigitNet(nn.Module):
    """digitlab's default: three conv-BN-act stages at 28, 14 and 7 pixels, max-pooled, then a
    linear head on the 3x3 map. Chosen for CPU speed: few, wide-enough 3x3 convs and no
    high-resolution deep stage (most FLOPs of bigger nets sit at 28x28)."""

    def __init__(self, widths=(32, 64, 128), convs_per_stage: int = 1, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        layers: list[nn.Module] = [Normalize()]
        cin = 1
        for width in widths:
            for _ in range(convs_per_stage):
                layers.append(conv_bn_act(cin, width, activation))
                cin = width
            layers.append(nn.MaxPool2d(2))  # 28 -> 14 -> 7 -> 3
        self.features = nn.Sequential(*layers)
        side = 28 >> len(widths)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * side * side, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,1,28,28) in [0,1] -> (B,10) logits
        return self.head(self.features(x))


@register("digitnet", task="recognize")
def digitnet(widths=(32, 64, 128), convs_per_stage: int = 1, dropout: float = 0.0,
             activation: str = "relu") -> nn.Module:
    return DigitNet(tuple(widths), convs_per_stage, dropout, activation)


class DigitNetFast(nn.Module):
    """DigitNet for a CPU budget of seconds: no convolution runs at 28x28. A 4x4 stride-2 stem
    (overlapping patches; 2x2 would be ConvNeXt's "patchify") takes the image to 14x14 in one step,
    cheap as it has one input channel; the 3x3 convs then spend the FLOPs at 14x14 and 7x7,
    max-pooled in between, and a linear head reads the 3x3 map. `convs` is how many 3x3 convs run
    at (14x14, 7x7). See docs/speed.md for the measurements."""

    def __init__(self, widths=(16, 32, 64), convs=(1, 2), stem_kernel: int = 4, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__()
        if len(widths) != 3 or len(convs) != 2:
            raise ValueError(f"widths needs 3 numbers (stem, 14x14, 7x7) and convs 2, got {widths} and {convs}")
        stem, mid, low = widths
        layers: list[nn.Module] = [Normalize(), conv_bn_act(1, stem, activation, kernel=stem_kernel, stride=2)]
        cin = stem
        for width, count in zip((mid, low), convs):
            for _ in range(count):
                layers.append(conv_bn_act(cin, width, activation))
                cin = width
            layers.append(nn.MaxPool2d(2))  # 14 -> 7 -> 3
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(cin * 3 * 3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B,1,28,28) in [0,1] -> (B,10) logits
        return self.head(self.features(x))


@register("digitnet_fast", task="recognize")
def digitnet_fast(widths=(16, 32, 64), convs=(1, 2), stem_kernel: int = 4, dropout: float = 0.0,
                  activation: str = "relu") -> nn.Module:
    return DigitNetFast(tuple(widths), tuple(convs), stem_kernel, dropout, activation)
