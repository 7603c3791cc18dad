"""Batched, seeded augmentation of digit images: one resampling per batch, all randomness from a generator.

Images are float tensors in [0, 1], shape (B, 1, H, W), background 0. The random affine
(rotation, translation, scale, shear) and the elastic field are composed into a single sampling
grid, so each batch is resampled once with `grid_sample`; the optional blur is one grouped conv
per axis. No per-image Python loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digitlab.errors import DigitlabError


@dataclass
class AugmentConfig:
    p: float = 1.0  # probability that an image gets the random geometric warp (affine + elastic)
    rotate: float = 0.0  # max degrees, uniform in [-rotate, rotate]; positive = counter-clockwise
    translate: float = 0.0  # max shift as a fraction of the size, per axis
    scale: tuple[float, float] = (1.0, 1.0)
    shear: float = 0.0  # max degrees of x-shear
    elastic_alpha: float = 0.0  # RMS elastic displacement in pixels (0 = off)
    elastic_sigma: float = 4.0  # smoothness of the displacement field (pixels)
    blur_p: float = 0.0  # probability of a Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 1.0)

    def __post_init__(self):
        self.scale, self.blur_sigma = tuple(self.scale), tuple(self.blur_sigma)  # YAML gives lists
        bad = [f"{name}={getattr(self, name)}" for name, ok in [
            ("p", 0 <= self.p <= 1), ("blur_p", 0 <= self.blur_p <= 1),
            ("rotate", self.rotate >= 0), ("translate", self.translate >= 0), ("shear", 0 <= self.shear < 90),
            ("elastic_alpha", self.elastic_alpha >= 0), ("elastic_sigma", self.elastic_sigma > 0),
            ("scale", len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]),
            ("blur_sigma", len(self.blur_sigma) == 2 and 0 <= self.blur_sigma[0] <= self.blur_sigma[1]),
        ] if not ok]
        if bad:
            raise DigitlabError(f"invalid augmentation settings: {', '.join(bad)}",
                                "use probabilities in [0, 1], non-negative magnitudes (shear < 90 degrees), "
                                "and (low, high) ranges with 0 < low <= high")

    def warps(self) -> bool:
        """Whether any geometric warp can happen (the grid_sample pass is skipped otherwise)."""
        geometric = self.rotate or self.translate or self.shear or self.elastic_alpha
        return self.p > 0 and bool(geometric or tuple(self.scale) != (1.0, 1.0))

    def enabled(self) -> bool:
        return self.warps() or self.blur_p > 0


def affine_matrices(angle_deg, translate_xy, scale, shear_deg, size: tuple[int, int] | None = None):
    """Sampling matrices for `F.affine_grid` (align_corners=False), one per image: (B, 2, 3).

    The forward transform about the image centre is: scale, then x-shear, then rotate
    (positive = counter-clockwise on screen), then translate by `translate_xy` (B, 2) fractions of
    (width, height). affine_grid wants the inverse (output -> input), in normalised coordinates;
    `size` (H, W) keeps rotations angle-true on non-square images.
    """
    angle = torch.as_tensor(angle_deg, dtype=torch.float32) * (math.pi / 180)  # (B,)
    shear = torch.as_tensor(shear_deg, dtype=torch.float32, device=angle.device) * (math.pi / 180)
    s = torch.as_tensor(scale, dtype=torch.float32, device=angle.device).expand_as(angle)
    t = torch.as_tensor(translate_xy, dtype=torch.float32, device=angle.device).reshape(-1, 2)
    c, si, k = torch.cos(angle), torch.sin(angle), torch.tan(shear)
    # Forward linear part M = R @ Sh @ S in pixel axes (x right, y down). R = [[cos, sin], [-sin, cos]]
    # turns counter-clockwise on screen because y points down; Sh = [[1, tan], [0, 1]].
    m = torch.stack([torch.stack([c * s, (c * k + si) * s], -1),
                     torch.stack([-si * s, (c - si * k) * s], -1)], -2)  # (B, 2, 2)
    h, w = size if size is not None else (1, 1)
    d = torch.tensor([w, h], dtype=torch.float32, device=angle.device)  # pixel units per axis
    lin = torch.linalg.inv(m) * d[None, :] / d[:, None]  # D^-1 M^-1 D: inverse in normalised coords
    shift = -(lin @ (2 * t).unsqueeze(-1))  # a fraction f of the size is 2f in normalised units
    return torch.cat([lin, shift], dim=-1)


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly warp and blur a batch (B, 1, H, W) in [0, 1]; same generator state -> same output.

    Random parameters are drawn on the generator's device, then moved to x's device. A disabled
    config returns `x` itself.
    """
    if x.dim() != 4:
        raise DigitlabError(f"augment expects images of shape (B, C, H, W), got {tuple(x.shape)}",
                            "add batch and channel dimensions, e.g. x[:, None] for (B, H, W)")
    if not cfg.enabled():
        return x
    out = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if cfg.warps():
        out = _warp(out, cfg, generator)
    if cfg.blur_p > 0:
        out = _blur(out, cfg, generator)
    return out.clamp_(0, 1).to(x.dtype)


def _rand(b: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """(b, n) uniform [0, 1) numbers drawn on the generator's device (it is device-bound), then moved."""
    return torch.rand(b, n, generator=generator, device=generator.device).to(device)


def _warp(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One affine_grid + (elastic) + grid_sample for the whole batch; unselected images get identity."""
    b, _, h, w = x.shape
    u = _rand(b, 6, g, x.device)  # columns: keep, angle, shift x, shift y, scale, shear
    keep = (u[:, 0] < cfg.p).float()  # (B,) 1 = warp this image, 0 = identity
    angle = cfg.rotate * (2 * u[:, 1] - 1) * keep
    shift = cfg.translate * (2 * u[:, 2:4] - 1) * keep[:, None]  # (B, 2) fractions of (W, H)
    scale = 1 + (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, 4] - 1) * keep
    shear = cfg.shear * (2 * u[:, 5] - 1) * keep
    theta = affine_matrices(angle, shift, scale, shear, size=(h, w)).to(x.dtype)
    grid = F.affine_grid(theta, [b, 1, h, w], align_corners=False)  # (B, H, W, 2), (x, y) in [-1, 1]
    if cfg.elastic_alpha > 0:
        grid = grid + _elastic_field(b, h, w, cfg, g, x.device).to(x.dtype) * keep[:, None, None, None]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _elastic_field(b: int, h: int, w: int, cfg: AugmentConfig, g: torch.Generator, device):
    """Smoothed random displacement (Simard et al. 2003) in normalised units: (B, H, W, 2).

    Uniform noise is Gaussian-smoothed, then scaled so its RMS displacement is elastic_alpha pixels
    (smoothing alone would shrink it by a factor that depends on sigma).
    """
    noise = torch.rand(b, 2, h, w, generator=g, device=g.device).to(device) * 2 - 1
    # Separable smoothing as two small matmuls: much faster than a 25-tap conv on CPU.
    rows, cols = (_smoothing_matrix(n, cfg.elastic_sigma, device) for n in (h, w))
    field = rows @ noise @ cols.T  # (B, 2, H, W), smoothed along H, then along W
    rms = field.square().mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-12)
    field = field / rms * cfg.elastic_alpha  # (B, 2, H, W) in pixels, channel 0 = dx
    field = field * torch.tensor([2.0 / w, 2.0 / h], device=device).view(1, 2, 1, 1)
    return field.permute(0, 2, 3, 1)


def _smoothing_matrix(n: int, sigma: float, device) -> torch.Tensor:
    """(n, n) matrix S with S @ v = v Gaussian-smoothed along its length, reflected at the ends."""
    radius = min(_radius(sigma), n - 1)  # one reflection covers every tap
    k = _gaussian_kernels(torch.full((1,), sigma, device=device), radius)  # (1, K)
    rows = torch.arange(n, device=device)[:, None]  # (n, 1)
    cols = (rows + torch.arange(-radius, radius + 1, device=device)).abs()  # (n, K), reflect at 0
    cols = torch.where(cols > n - 1, 2 * (n - 1) - cols, cols)  # reflect at n - 1
    s = torch.zeros(n, n, device=device)
    return s.index_put_((rows.expand_as(cols), cols), k.expand(n, -1), accumulate=True)


def _blur(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Gaussian blur with a per-image sigma; images not drawn get a delta kernel (unchanged)."""
    b, c, h, w = x.shape
    u = _rand(b, 2, g, x.device)  # columns: chosen, sigma
    sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, 1]
    sigma = torch.where(u[:, 0] < cfg.blur_p, sigma, torch.zeros_like(sigma))  # sigma 0 -> delta kernel
    kernels = _gaussian_kernels(sigma, _radius(cfg.blur_sigma[1])).to(x.dtype)  # (B, K)
    y = _separable(x.reshape(b * c, 1, h, w), kernels.repeat_interleave(c, 0), padding="replicate")
    return y.view(b, c, h, w)


def _radius(sigma_max: float) -> int:
    return max(1, math.ceil(3 * sigma_max))


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Normalised 1-D Gaussian kernels (N, 2r+1); sigma 0 gives a delta."""
    t = torch.arange(-radius, radius + 1, device=sigma.device, dtype=torch.float32)
    s = sigma.float().clamp_min(1e-6)[:, None]
    k = torch.exp(-0.5 * (t[None, :] / s) ** 2)  # underflows to an exact delta for tiny sigma
    return k / k.sum(dim=1, keepdim=True)


def _separable(x: torch.Tensor, kernels: torch.Tensor, padding: str) -> torch.Tensor:
    """Blur each image of x (N, 1, H, W) with its own kernel (N, K): two grouped convs."""
    n, _, h, w = x.shape
    r = kernels.shape[1] // 2
    y = F.pad(x.reshape(1, n, h, w), (r, r, r, r), mode=padding)  # (1, N, H+2r, W+2r)
    y = F.conv2d(y, kernels.view(n, 1, 1, -1), groups=n)  # along x -> (1, N, H+2r, W)
    y = F.conv2d(y, kernels.view(n, 1, -1, 1), groups=n)  # along y -> (1, N, H, W)
    return y.view(n, 1, h, w)
