"""The two residual networks of the reports (docs/reproduction.md): R2's Keras-style ResNet and R4's wide ResNet."""

from __future__ import annotations

import torch
import torch.nn as nn

from digitlab.models.layers import Normalize, make_activation
from digitlab.models.registry import register


class BasicBlock(nn.Module):
    """Two 3x3 conv+BN with an identity shortcut, or a 1x1 conv projection (optionally with
    dropout, as R4) when the shape changes."""

    def __init__(self, cin: int, cout: int, stride: int, act: str, shortcut_dropout: float = 0.0):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = make_activation(act)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = make_activation(act)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                nn.BatchNorm2d(cout),
                nn.Dropout(shortcut_dropout),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


@register("resnet_r2", task="recognize")
def resnet_r2(activation: str = "relu", strides=(1, 2, 2)) -> nn.Module:
    """R2: stem conv7x7/2 (64) + BN + act + maxpool 3x3/2, three residual blocks of 64 channels
    (1x1 projection where a block downsamples), global average pool, dense 64 + act, dense 10.
    R2 does not give the block strides; (1, 2, 2) takes 7x7 -> 4x4 -> 2x2, like Keras 'same'."""
    blocks = [BasicBlock(64, 64, s, activation) for s in strides]
    return nn.Sequential(
        Normalize(),
        nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False),  # (B,64,14,14)
        nn.BatchNorm2d(64), make_activation(activation),
        nn.MaxPool2d(3, stride=2, padding=1),  # (B,64,7,7)
        *blocks,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(64, 64), make_activation(activation),
        nn.Linear(64, 10),
    )


@register("resnet_r4", task="recognize")
def resnet_r4(activation: str = "relu", widths=(128, 256, 512),
              shortcut_dropout: float = 0.1) -> nn.Module:
    """R4: conv3x3 1->32 + BN + act, stages of 128, 256, 512 channels with two blocks each
    (stride 2 on the last two stages), dropout 0.1 in projection shortcuts, GAP, linear 10."""
    layers: list[nn.Module] = [
        Normalize(),
        nn.Conv2d(1, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32), make_activation(activation),
    ]
    cin = 32
    for i, width in enumerate(widths):
        stride = 1 if i == 0 else 2
        layers.append(BasicBlock(cin, width, stride, activation, shortcut_dropout))
        layers.append(BasicBlock(width, width, 1, activation, shortcut_dropout))
        cin = width
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, 10)]
    return nn.Sequential(*layers)
