"""Denoising models: R1's U-Net (docs/reproduction.md; with the knobs its studies turned) and digitlab's own denoiser.

Every denoise model maps noisy (B,1,28,28) in [0,1] to `(clean (B,1,28,28) in [0,1], kind_logits (B,6))`.
R1's report asks the model to say which noise it saw, but its U-Net has no output for that; `unet_r1`
therefore carries a tiny linear head (global average of the bottleneck -> 6 logits, 1,542
parameters at the default widths) so both models are scored on the same task. `kind_head=false`
drops it; the task then reports no kind accuracy for that model (logits are all zero).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from digitlab.errors import DigitlabError
from digitlab.models.layers import make_activation
from digitlab.models.registry import register

NUM_KINDS = 6
SKIPS = ("concat", "add", "none")
HEADS = ("bottleneck", "multi", "residual", "none")


def double_conv(cin: int, cout: int, act: str, batchnorm: bool) -> nn.Sequential:
    """R1's stage: two 3x3 convs (padding 1), each followed by BatchNorm (optional) and the activation."""
    layers: list[nn.Module] = []
    for c_in in (cin, cout):
        layers.append(nn.Conv2d(c_in, cout, 3, padding=1, bias=not batchnorm))
        if batchnorm:
            layers.append(nn.BatchNorm2d(cout))
        layers.append(make_activation(act))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder stages `widths` (2x2 max-pool between), bottleneck, transposed-conv (k2 s2) decoder.

    skip: "concat" (R1), "add" or "none". bottleneck: 0 = no bottleneck stage (the deepest encoder
    stage feeds the decoder directly, R1's ablation). residual: predict the noise r and return
    clip(x - r) instead of Sigmoid(conv(features)). head: "bottleneck" (pooled bottleneck -> linear),
    "multi" (pooled first stage + bottleneck -> small MLP), "residual" (multi plus NoiseStats of the
    noisy image against the model's own clean estimate) or "none".
    """

    def __init__(self, widths=(64, 128), bottleneck: int = 256, skip: str = "concat",
                 batchnorm: bool = True, activation: str = "relu", residual: bool = False,
                 head: str = "bottleneck", head_hidden: int = 64):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w < 1 for w in widths):
            raise DigitlabError(f"widths {widths} must be a non-empty list of positive channel counts",
                                "write model_args.widths=[64,128]")
        if skip not in SKIPS:
            raise DigitlabError(f"unknown skip type {skip!r}", f"use one of: {', '.join(SKIPS)}")
        if head not in HEADS:
            raise DigitlabError(f"unknown kind head {head!r}", f"use one of: {', '.join(HEADS)}")
        self.skip, self.residual, self.head_kind = skip, residual, head
        self.down = nn.ModuleList()
        cin = 1
        for w in widths:
            self.down.append(double_conv(cin, w, activation, batchnorm))
            cin = w
        self.pool = nn.MaxPool2d(2)
        deep = cin
        self.bottleneck = double_conv(deep, bottleneck, activation, batchnorm) if bottleneck else None
        deep_out = bottleneck or deep
        # With no bottleneck the deepest encoder stage is not pooled: the decoder starts one level up.
        levels = widths if bottleneck else widths[:-1]
        self.up, self.dec = nn.ModuleList(), nn.ModuleList()
        cin = deep_out
        for w in reversed(levels):
            self.up.append(nn.ConvTranspose2d(cin, w, 2, stride=2))
            self.dec.append(double_conv(2 * w if skip == "concat" else w, w, activation, batchnorm))
            cin = w
        self.out = nn.Conv2d(cin, 1, 1)
        self.levels = len(levels)
        self.stats = NoiseStats() if head == "residual" else None  # buffers only, no parameters
        if head == "bottleneck":
            self.kind = nn.Linear(deep_out, NUM_KINDS)
        elif head in ("multi", "residual"):
            n_in = 2 * widths[0] + 2 * deep_out + (self.stats.out_features if self.stats else 0)
            self.kind = nn.Sequential(nn.Linear(n_in, head_hidden),
                                      make_activation(activation), nn.Linear(head_hidden, NUM_KINDS))
        else:
            self.kind = None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skips = []
        h = x
        for i, stage in enumerate(self.down):
            h = stage(h)
            if self.bottleneck is not None or i < len(self.down) - 1:
                skips.append(h)
                h = self.pool(h)
        first = skips[0] if skips else h
        if self.bottleneck is not None:
            h = self.bottleneck(h)
        deep = h
        for up, dec, s in zip(self.up, self.dec, reversed(skips[: self.levels])):
            h = _match(up(h), s)
            if self.skip == "concat":
                h = torch.cat([h, s], 1)
            elif self.skip == "add":
                h = h + s
            h = dec(h)
        y = self.out(h)
        clean = (x - y).clamp(0, 1) if self.residual else torch.sigmoid(y)
        return clean, self._kind_logits(first, deep, x, clean)

    def _kind_logits(self, first: torch.Tensor, deep: torch.Tensor, x: torch.Tensor,
                     clean: torch.Tensor) -> torch.Tensor:
        if self.kind is None:
            return x.new_zeros(x.shape[0], NUM_KINDS)
        if self.head_kind == "bottleneck":
            return self.kind(deep.mean((2, 3)))
        # mean and max of the full-resolution features see isolated impulses the pooled bottleneck blurs.
        feats = [first.mean((2, 3)), first.amax((2, 3)), deep.mean((2, 3)), deep.amax((2, 3))]
        if self.stats is not None:
            feats.append(self.stats(x, clean))
        return self.kind(torch.cat(feats, 1))


class NoiseStats(nn.Module):
    """Per-image noise statistics, computed by hand: for five bands of the (detached) clean estimate c,
    the log mean of r^2, |r| and r^4 of the residual r = noisy - c, and the fractions of pixels
    clipped to 0 and to 1.

    Why: shot (poisson) and speckle noise differ in how the residual's spread grows with the clean
    intensity (variance ~ c versus ~ c^2) and in how often ink is clipped to 0; gaussian and uniform
    differ in the residual's tails (r^4 against r^2). Pooled U-Net features blur this (91.8% kind
    accuracy, speckle taken for poisson 38% of the time); a small learned per-pixel MLP in their place
    barely helped in a short run (89.0 vs 87.2% on a 30% epoch), while these moments, computed from
    the TRUE clean image, separate poisson from speckle 97.5% of the time. The features are fixed;
    only their standardisation is learned (running mean/variance, as BatchNorm without the affine
    part, frozen for a one-image batch), because unscaled they differ by too little for the shared
    head to pick up in a short run. c is detached: this never steers the denoiser.
    """

    bands = (0.0, 0.05, 0.35, 0.65, 0.95, 1.01)
    out_features = 5 * (len(bands) - 1)

    def __init__(self):
        super().__init__()
        self.register_buffer("running_mean", torch.zeros(self.out_features))
        self.register_buffer("running_var", torch.ones(self.out_features))

    def forward(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        return self.standardise(self.features(noisy, clean))

    def features(self, noisy: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
        """The raw features (B, out_features): log moments and clip fractions per band."""
        clean = clean.detach()
        r = noisy - clean
        per_pixel = torch.cat([r * r, r.abs(), (r * r) ** 2, (noisy <= 0).to(r.dtype), (noisy >= 1).to(r.dtype)], 1)
        feats = []
        for lo, hi in zip(self.bands[:-1], self.bands[1:]):
            band = ((clean >= lo) & (clean < hi)).to(r.dtype)  # (B, 1, H, W)
            mean = (per_pixel * band).sum((2, 3)) / band.sum((2, 3)).clamp_min(1)  # (B, 5)
            # logs turn ratios of moments into differences a linear layer can take; fractions stay as they are
            feats.append(torch.cat([torch.log(mean[:, :3] + 1e-6), mean[:, 3:]], 1))
        return torch.cat(feats, 1)

    def standardise(self, f: torch.Tensor) -> torch.Tensor:
        update = self.training and f.shape[0] > 1
        return F.batch_norm(f, self.running_mean, self.running_var, training=update, momentum=0.01)


def _match(h: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Pad the upsampled map to the skip's size (7 -> 3 -> 6 vs 7 when a third pool floors)."""
    dh, dw = ref.shape[2] - h.shape[2], ref.shape[3] - h.shape[3]
    return F.pad(h, (0, dw, 0, dh)) if dh or dw else h


@register("unet_r1", task="denoise")
def unet_r1(widths=(64, 128), bottleneck: int = 256, skip: str = "concat", batchnorm: bool = True,
            activation: str = "relu", kind_head: bool = True) -> UNet:
    """R1 exactly: [64,128] + 256, concat skips, BN, ReLU, Sigmoid, plus a 1,542-parameter linear kind head.

    R1 says "about 1.2M parameters", but the layers it lists count 1,862,977; we build the layers.
    """
    return UNet(widths, bottleneck, skip, batchnorm, activation, residual=False,
                head="bottleneck" if kind_head else "none")


@register("denoiser", task="denoise")
def denoiser(widths=(32, 64), bottleneck: int = 128, skip: str = "concat", batchnorm: bool = True,
             activation: str = "relu", residual: bool = True, head: str = "residual") -> UNet:
    """digitlab's own: a narrower U-Net that predicts the noise (clean = clip(x - r)) and names the kind
    from mean/max-pooled full-resolution and bottleneck features plus NoiseStats of its own residual."""
    return UNet(widths, bottleneck, skip, batchnorm, activation, residual=residual, head=head)
