"""Siamese networks for "do these two images show the same digit?".

Both share the structure of R5 (docs/reproduction.md): one encoder embeds each image; a head reads the symmetric
features [|e1 - e2|, e1 * e2], so swapping the inputs cannot change the output. Every model has
`embed(x) -> (B, D)` (used for one-shot classification and the PCA map) and
`forward(a, b) -> (B,) logit`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab.models.layers import Normalize, conv_bn_act, make_activation
from digitlab.models.registry import register


class Siamese(nn.Module):
    def __init__(self, encoder: nn.Module, dim: int, head_hidden: tuple[int, ...], dropout: float,
                 activation: str = "relu", normalize_embedding: bool = False, classes: int = 0,
                 class_scale: float = 16.0):
        super().__init__()
        self.encoder = encoder
        self.normalize_embedding = normalize_embedding
        # Optional digit proxies for an auxiliary classification term (normalised softmax): one unit
        # vector per digit, logits = scale * cosine(embedding, proxy). Unused by forward's logit.
        self.proxies = nn.Parameter(torch.randn(classes, dim) / dim ** 0.5) if classes else None
        self.class_scale = class_scale
        layers, width = [], 2 * dim
        for hidden in head_hidden:
            layers += [nn.Linear(width, hidden), make_activation(activation), nn.Dropout(dropout)]
            width = hidden
        self.head = nn.Sequential(*layers, nn.Linear(width, 1))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B,1,28,28) in [0,1] -> (B,D); unit length if the model normalises its embedding."""
        e = self.encoder(x)
        return F.normalize(e, dim=1) if self.normalize_embedding else e

    def head_logit(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """(B,D), (B,D) -> (B,) logit of "same digit"; symmetric in e1, e2."""
        return self.head(torch.cat([(e1 - e2).abs(), e1 * e2], dim=1)).squeeze(1)

    def class_logits(self, e: torch.Tensor) -> torch.Tensor:
        """(N, D) embeddings -> (N, classes) digit logits from the proxies."""
        return self.class_scale * F.normalize(e, dim=1) @ F.normalize(self.proxies, dim=1).T

    def forward(self, a: torch.Tensor, b: torch.Tensor, return_embeddings: bool = False):
        """(B,1,28,28) x2 -> (B,) logit; with return_embeddings also (e1, e2), each (B, D), and the
        digit logits of [a; b] (2B, classes) or None -- all through forward, so DDP still
        synchronises gradients for losses on the embeddings."""
        e1, e2 = self.embed(torch.cat([a, b])).chunk(2)  # one encoder pass over both: (2B, D)
        logit = self.head_logit(e1, e2)
        if not return_embeddings:
            return logit
        digits = self.class_logits(torch.cat([e1, e2])) if self.proxies is not None else None
        return logit, e1, e2, digits


def _conv_bias_bn_act(cin: int, cout: int, kernel: int, activation: str) -> nn.Sequential:
    """PyTorch's default Conv2d (with bias) as R5 wrote it, then BN and the activation."""
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, padding=kernel // 2), nn.BatchNorm2d(cout),
                         make_activation(activation))


@register("siamese_r5", task="compare")
def siamese_r5(dropout: float = 0.3, activation: str = "relu") -> Siamese:
    """R5 as described: conv5x5 1->32, conv3x3 32->64, conv3x3 64->128 (each BN, ReLU; max-pool,
    max-pool, global average pool), projection Linear 128->128 + ReLU, head 256 -> 256 -> 64 -> 1
    with dropout. 192,449 parameters (R5 reports 192k; the report does not give the head widths or
    the dropout rate, so 256/64 and 0.3 are our reading)."""
    encoder = nn.Sequential(
        Normalize(),
        _conv_bias_bn_act(1, 32, 5, activation), nn.MaxPool2d(2),
        _conv_bias_bn_act(32, 64, 3, activation), nn.MaxPool2d(2),
        _conv_bias_bn_act(64, 128, 3, activation), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(128, 128), make_activation(activation),
    )
    return Siamese(encoder, 128, (256, 64), dropout, activation)


@register("siamese_plus", task="compare")
def siamese_plus(widths: tuple[int, int, int] = (32, 64, 128), dim: int = 128, dropout: float = 0.2,
                 activation: str = "relu", classes: int = 0) -> Siamese:
    """digitlab's design: a deeper encoder (two 3x3 convs per stage at 14x14 and 7x7), a BN'd
    linear projection without the final ReLU (so the embedding can use every direction), and a
    unit-length embedding that a cosine contrastive term can shape for one-shot use. `classes` adds
    digit proxies for the task's auxiliary classification term (task_args.class_weight)."""
    c1, c2, c3 = widths
    encoder = nn.Sequential(
        Normalize(),
        conv_bn_act(1, c1, activation), nn.MaxPool2d(2),                               # 14x14
        conv_bn_act(c1, c2, activation), conv_bn_act(c2, c2, activation), nn.MaxPool2d(2),  # 7x7
        conv_bn_act(c2, c3, activation), conv_bn_act(c3, c3, activation),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(c3, dim, bias=False), nn.BatchNorm1d(dim),
    )
    return Siamese(encoder, dim, (128,), dropout, activation, normalize_embedding=True, classes=classes)
