"""Batched, seeded augmentation of digit images: one resampling per batch, all randomness from a generator.

Images are float tensors in [0, 1], shape (B, 1, H, W), background 0. The random affine
(rotation, translation, scale, shear) and the elastic field are composed into a single sampling
grid, so each batch is resampled once with `grid_sample`; the optional blur is one grouped conv
per axis. No per-image Python loops.

Style augmentation (off by default) mimics how real handwriting differs from MNIST (see
`digitlab.data.shift`, the robustness suite it is tuned against): aspect stretch (inside the same
warp), stroke width (max-pool dilation / min-pool erosion, blended for sub-pixel amounts), low
resolution (area down-sampling, bilinear back), a binarising threshold or gamma, broken strokes
(small holes), stray lines and sensor noise. Each is a whole-batch tensor op with per-image draws.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digitlab.data.preprocess import BOX, CENTRE, INK_THRESHOLD
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
    # style augmentation: each *_p is the probability that an image gets it
    styles_p: float = 1.0  # share of the images that may get style augmentation; the others are only warped
    aspect: float = 1.0  # horizontal stretch factor drawn log-uniform in [1/aspect, aspect] (in the warp)
    stroke_p: float = 0.0
    stroke: float = 1.0  # max stroke width change, pixels per side, uniform in [-stroke, stroke]
    lowres_p: float = 0.0
    lowres: tuple[int, int] = (8, 16)  # side of the down-sampled field, one drawn per batch
    binarize_p: float = 0.0  # threshold at a level uniform in [0.25, 0.6] (else gamma, if enabled)
    gamma: float = 1.0  # gamma drawn log-uniform in [1/gamma, gamma] for the images not binarised
    broken_p: float = 0.0
    broken_holes: float = 6.0  # expected 3x3 holes per image (about a fifth land on ink)
    broken_ink_holes: float = 0.0  # expected 3x3 holes centred on ink per image, besides broken_holes
    lines_p: float = 0.0  # a stray straight line (solid or dotted) across the field
    lines_segments: int = 1  # a stray line is a zigzag of 1..lines_segments straight segments
    lines_radius: tuple[float, float] = (1.25, 1.25)  # half-width in px of a stray line, drawn per image
    refit_p: float = 0.0  # crop to the ink and fit it to 20 px again, as preprocessing does with a real input
    fill_p: float = 0.0  # crop to the ink and stretch it to fill the 20x20 box, aspect lost (size-normalised scans)
    noise_p: float = 0.0
    noise_std: float = 0.1  # max std of additive Gaussian noise
    fog_p: float = 0.0  # a smooth haze of up to 0.4 (uneven lighting)
    continental_p: float = 0.0  # 7s get a bar across the stem, 1s a flag at the top (needs labels)

    def __post_init__(self):
        self.scale, self.blur_sigma = tuple(self.scale), tuple(self.blur_sigma)  # YAML gives lists
        self.lowres, self.lines_radius = tuple(self.lowres), tuple(self.lines_radius)
        probabilities = [(n, 0 <= getattr(self, n) <= 1) for n in self._STYLE_P + ("p", "blur_p", "styles_p")]
        bad = [f"{name}={getattr(self, name)}" for name, ok in probabilities + [
            ("aspect", self.aspect >= 1), ("gamma", self.gamma >= 1), ("stroke", 0 <= self.stroke <= 2),
            ("lowres", len(self.lowres) == 2 and 2 <= self.lowres[0] <= self.lowres[1] <= 28),
            ("broken_holes", self.broken_holes >= 0), ("broken_ink_holes", self.broken_ink_holes >= 0),
            ("noise_std", self.noise_std >= 0),
            ("lines_segments", isinstance(self.lines_segments, int) and 1 <= self.lines_segments <= 8),
            ("rotate", self.rotate >= 0), ("translate", self.translate >= 0), ("shear", 0 <= self.shear < 90),
            ("elastic_alpha", self.elastic_alpha >= 0), ("elastic_sigma", self.elastic_sigma > 0),
            ("scale", len(self.scale) == 2 and 0 < self.scale[0] <= self.scale[1]),
            ("blur_sigma", len(self.blur_sigma) == 2 and 0 <= self.blur_sigma[0] <= self.blur_sigma[1]),
            ("lines_radius", len(self.lines_radius) == 2 and 0 < self.lines_radius[0] <= self.lines_radius[1]),
        ] if not ok]
        if bad:
            raise DigitlabError(f"invalid augmentation settings: {', '.join(bad)}",
                                "use probabilities in [0, 1], non-negative magnitudes (shear < 90 degrees, "
                                "stroke <= 2 px), factors aspect and gamma >= 1, lowres sides in [2, 28], "
                                "lines_segments in [1, 8], and (low, high) ranges with 0 < low <= high")

    _STYLE_P = ("stroke_p", "lowres_p", "binarize_p", "broken_p", "lines_p", "noise_p", "fog_p", "continental_p",
                "refit_p", "fill_p")

    def styles(self) -> bool:
        """Whether any style augmentation after the warp can happen."""
        return any(getattr(self, n) > 0 for n in self._STYLE_P) or self.gamma > 1

    def warps(self) -> bool:
        """Whether any geometric warp can happen (the grid_sample pass is skipped otherwise)."""
        geometric = self.rotate or self.translate or self.shear or self.elastic_alpha or self.aspect > 1
        return self.p > 0 and bool(geometric or tuple(self.scale) != (1.0, 1.0))

    def enabled(self) -> bool:
        return self.warps() or self.blur_p > 0 or self.styles()


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


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
            labels: torch.Tensor | None = None) -> torch.Tensor:
    """Randomly warp and blur a batch (B, 1, H, W) in [0, 1]; same generator state -> same output.

    Random parameters are drawn on the generator's device, then moved to x's device. A disabled
    config returns `x` itself. `labels` (B,) digit classes are needed only by `continental_p`.
    """
    if x.dim() != 4:
        raise DigitlabError(f"augment expects images of shape (B, C, H, W), got {tuple(x.shape)}",
                            "add batch and channel dimensions, e.g. x[:, None] for (B, H, W)")
    if not cfg.enabled():
        return x
    if cfg.continental_p > 0 and labels is None:
        raise DigitlabError("augment.continental_p needs the digits' labels",
                            "pass labels=... to augment, or set augment.continental_p=0")
    out = x if x.dtype in (torch.float32, torch.float64) else x.float()
    if cfg.continental_p > 0:  # before the warp, so the added strokes slant and stretch with the digit
        out = _continental(out, labels, cfg, generator)
    if cfg.warps():
        out = _warp(out, cfg, generator)
    warped = out
    if cfg.stroke_p > 0:
        out = _stroke_width(out, cfg, generator)
    if cfg.lowres_p > 0:
        out = _lowres(out, cfg, generator)
    if cfg.blur_p > 0:
        out = _blur(out, cfg, generator)
    if cfg.binarize_p > 0 or cfg.gamma > 1:
        out = _levels(out, cfg, generator)
    if cfg.broken_p > 0:
        out = _broken(out, cfg, generator)
    if cfg.lines_p > 0:
        out = _lines(out, cfg, generator)
    if cfg.refit_p > 0 or cfg.fill_p > 0:  # after all that moves the ink's box; before fog (preprocessing removes it)
        out = _refit(out, cfg, generator)
    if cfg.fog_p > 0:
        out = _fog(out, cfg, generator)
    if cfg.noise_p > 0:
        out = _noise(out, cfg, generator)
    if cfg.styles_p < 1 and cfg.styles():  # the others keep MNIST's own look (docs/shift.md: clean accuracy)
        plain, _ = _chosen(len(x), 1 - cfg.styles_p, generator, x.device)
        out = plain * warped + (1 - plain) * out
    return out.clamp_(0, 1).to(x.dtype)


def _rand(b: int, n: int, generator: torch.Generator, device) -> torch.Tensor:
    """(b, n) uniform [0, 1) numbers drawn on the generator's device (it is device-bound), then moved."""
    return torch.rand(b, n, generator=generator, device=generator.device).to(device)


def _warp(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """One affine_grid + (elastic) + grid_sample for the whole batch; unselected images get identity."""
    b, _, h, w = x.shape
    u = _rand(b, 6 + (cfg.aspect > 1), g, x.device)  # keep, angle, shift x, shift y, scale, shear, [aspect]
    keep = (u[:, 0] < cfg.p).float()  # (B,) 1 = warp this image, 0 = identity
    angle = cfg.rotate * (2 * u[:, 1] - 1) * keep
    shift = cfg.translate * (2 * u[:, 2:4] - 1) * keep[:, None]  # (B, 2) fractions of (W, H)
    scale = 1 + (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, 4] - 1) * keep
    shear = cfg.shear * (2 * u[:, 5] - 1) * keep
    theta = affine_matrices(angle, shift, scale, shear, size=(h, w)).to(x.dtype)
    if cfg.aspect > 1:  # stretch x by a first: the inverse map divides the x row by a
        a = torch.exp(math.log(cfg.aspect) * (2 * u[:, 6] - 1) * keep).to(x.dtype)
        theta = theta * torch.stack([1 / a, torch.ones_like(a)], 1)[:, :, None]
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


# --- style augmentation (see the module docstring) ---------------------------------------------

def _chosen(b: int, p: float, g: torch.Generator, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask (B,1,1,1) of images that get the augmentation, a (B,) uniform draw for its amount)."""
    u = _rand(b, 2, g, device)
    return (u[:, 0] < p).float().view(b, 1, 1, 1), u[:, 1]


def _renormalise(x: torch.Tensor) -> torch.Tensor:
    """Scale each image's max to 1 again, as preprocessing (to_mnist) does with a real input."""
    return x / x.amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)


def _stroke_width(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Dilate (3x3 max-pool) or erode (min-pool) by up to `stroke` px per side; fractional amounts
    blend with the next whole step, as grey levels are ink coverage."""
    on, u = _chosen(len(x), cfg.stroke_p, g, x.device)
    amount = (cfg.stroke * (2 * u - 1)).view(-1, 1, 1, 1) * on  # (B,1,1,1), + thicker, - thinner
    out = x
    for step in range(math.ceil(cfg.stroke)):
        frac = (amount.abs() - step).clamp(0, 1)
        dil, ero = F.max_pool2d(out, 3, 1, 1), -F.max_pool2d(-out, 3, 1, 1)
        out = out + frac * (torch.where(amount > 0, dil, ero) - out)
    return _renormalise(out)


def _lowres(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Area down-sampling to one side per batch drawn in `lowres`, bilinear back up."""
    on, u = _chosen(len(x), cfg.lowres_p, g, x.device)
    side = cfg.lowres[0] + int(u[0] * (cfg.lowres[1] - cfg.lowres[0] + 1) * 0.999)
    small = F.interpolate(x, size=(side, side), mode="area")
    back = F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)
    return on * _renormalise(back) + (1 - on) * x


def _levels(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Binarise at a random level, or (the other images) apply a random gamma to the ink."""
    on, u = _chosen(len(x), cfg.binarize_p, g, x.device)
    level = (0.25 + 0.35 * u).view(-1, 1, 1, 1)
    gamma = torch.exp(math.log(cfg.gamma) * (2 * _rand(len(x), 1, g, x.device) - 1)).view(-1, 1, 1, 1)
    return on * (x > level).to(x.dtype) + (1 - on) * x.clamp_min(0).pow(gamma)


def _broken(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Cut 3x3 holes (max-pooled random seeds): broken strokes. `broken_holes` fall anywhere, so
    most miss the strokes; `broken_ink_holes` are centred on ink, as a dry pen's gaps are (and the
    `broken` shift of `digitlab bench shift`)."""
    on, _ = _chosen(len(x), cfg.broken_p, g, x.device)
    u = _rand(len(x), x.shape[-2] * x.shape[-1], g, x.device).view_as(x)
    rate = cfg.broken_holes / x[0].numel()  # per pixel
    if cfg.broken_ink_holes > 0:
        ink = (x > 0.5).to(x.dtype)
        rate = rate + ink * cfg.broken_ink_holes / ink.sum(dim=(1, 2, 3), keepdim=True).clamp_min(1)
    seeds = u < rate
    holes = F.max_pool2d(seeds.to(x.dtype), 3, 1, 1)  # u, and so seeds, already have x's shape
    return x * (1 - on * holes)


def _lines(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A stray stroke (half-width drawn in `lines_radius`, ~2.5 px wide by default): a zigzag of
    1..lines_segments straight segments between random points (one segment when lines_segments is 1),
    dotted for half of the images. A ruled line or a scratch can be much thinner than a pen stroke,
    as the zigzag shift's is (docs/shift.md)."""
    b, _, h, w = x.shape
    on, u = _chosen(b, cfg.lines_p, g, x.device)
    size = torch.tensor([w, h], device=x.device, dtype=x.dtype)
    points = (_rand(b, 4, g, x.device) * size.repeat(2)).view(b, 2, 2)
    if cfg.lines_segments > 1:  # extra draws only when asked, so one-segment runs keep their random stream
        more = _rand(b, 2 * cfg.lines_segments - 1, g, x.device)
        points = torch.cat([points, (more[:, 1:] * size.repeat(cfg.lines_segments - 1)).view(b, -1, 2)], 1)
        count = 1 + (more[:, 0] * cfg.lines_segments * 0.999).long()  # (B,) segments drawn per image
    low, high = cfg.lines_radius
    radius = low + (high - low) * _rand(b, 1, g, x.device)[:, 0] if high > low else low  # drawn only when asked
    ink = torch.zeros_like(x)
    for k in range(cfg.lines_segments):
        seg, t, length = _segments(points[:, k], points[:, k + 1], radius, (h, w))
        dotted = (u < 0.5).view(b, 1, 1, 1) & (torch.remainder(t * length, 4) >= 2)  # dots every ~4 px
        drawn = on if k == 0 else on * (count > k).to(x.dtype).view(b, 1, 1, 1)
        ink = torch.maximum(ink, drawn * torch.where(dotted, torch.zeros_like(seg), seg))
    return torch.maximum(x, ink)


def _segments(p0: torch.Tensor, p1: torch.Tensor, radius, size: tuple[int, int]):
    """Anti-aliased strokes from p0 to p1 ((B, 2) as (x, y) pixels) of `radius` ((B,) or a number):
    (ink (B,1,H,W), position t along the segment (B,1,H,W), length (B,1,1,1))."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h, device=p0.device), torch.arange(w, device=p0.device), indexing="ij")
    pix = torch.stack([xs, ys], -1).to(p0.dtype) + 0.5  # (H,W,2) pixel centres
    a, d = p0[:, None, None, :], (p1 - p0)[:, None, None, :]  # (B,1,1,2)
    t = (((pix - a) * d).sum(-1) / d.square().sum(-1).clamp_min(1e-6)).clamp(0, 1)  # (B,H,W)
    dist = (pix - a - t[..., None] * d).norm(dim=-1)
    r = torch.as_tensor(radius, dtype=p0.dtype, device=p0.device).reshape(-1, 1, 1)
    return (r - dist).clamp(0, 1)[:, None], t[:, None], d.norm(dim=-1)[:, None]


def _refit(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Crop to the ink and fit it again, as `digitlab.data.preprocess.to_mnist` does with every real
    input: the ink box (> INK_THRESHOLD of the max, grown by a faint line per side) scaled so its longer
    side is BOX px, placed on whole pixels with its centre of mass nearest pixel CENTRE, ink kept inside.
    So a stray line or a flag that widens the box shrinks the digit in training as it does in use
    (docs/shift.md). MNIST's own digits come back unchanged. One bilinear resampling per batch.

    With fill_p, that share of the images is instead stretched to fill the BOX x BOX square, as
    collections that size-normalise each digit to a square without keeping its aspect hand them
    over: a 1 becomes a broad diagonal band (docs/shift.md, "Digits normalised to their field")."""
    b, _, h, w = x.shape
    on, _ = _chosen(b, cfg.refit_p, g, x.device)
    img = x[:, 0]
    peak = img.amax(dim=(1, 2), keepdim=True).clamp_min(1e-6)
    (top, bottom), (left, right) = (_ink_span(img, peak, axis) for axis in (2, 1))
    height, width = (bottom - top).clamp_min(1.0), (right - left).clamp_min(1.0)
    sy = sx = BOX / torch.maximum(height, width)  # output px per input px
    if cfg.fill_p > 0:  # drawn only when asked, so other presets keep their random stream
        fill, _ = _chosen(b, cfg.fill_p, g, x.device)
        fill = fill.view(b)
        sy, sx = torch.where(fill > 0, BOX / height, sy), torch.where(fill > 0, BOX / width, sx)
        on = torch.maximum(on, fill.view(b, 1, 1, 1))
    mass = img.sum((1, 2)).clamp_min(1e-6)
    cy = (img.sum(2) * torch.arange(h, device=x.device)).sum(1) / mass  # pixel indices, as to_mnist
    cx = (img.sum(1) * torch.arange(w, device=x.device)).sum(1) / mass
    zero = torch.zeros_like(sy)
    out_top = (CENTRE - ((cy + 0.5 - top) * sy - 0.5)).round().clamp(zero, h - height * sy)
    out_left = (CENTRE - ((cx + 0.5 - left) * sx - 0.5)).round().clamp(zero, w - width * sx)
    # output -> input in affine_grid's normalised units (align_corners=False): the output's edge
    # out_top samples the box's edge top; one output pixel steps 1/scale input pixels.
    theta = torch.stack([torch.stack([1 / sx, zero, 2 / w * (left + (w / 2 - out_left) / sx) - 1], 1),
                         torch.stack([zero, 1 / sy, 2 / h * (top + (h / 2 - out_top) / sy) - 1], 1)], 1)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    fitted = _renormalise(F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return on * fitted + (1 - on) * x


FAINT = 1e-3  # of the max: any ink above a clean background (preprocessing's faint rim)


def _ink_span(img: torch.Tensor, peak: torch.Tensor, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, last + 1) of the lines holding clear ink (looking along `axis`), each grown by one line
    where that line holds faint ink, as `preprocess._crop_to_ink`; (0, n) for an empty image."""
    idx = torch.arange(img.shape[3 - axis], device=img.device, dtype=img.dtype)
    first, last = _first_last(img > INK_THRESHOLD * peak, axis, idx)
    first_faint, last_faint = _first_last(img > FAINT * peak, axis, idx)
    empty = last < 0
    first = torch.maximum(first - 1, first_faint).clamp_max(first)
    last = torch.minimum(last + 1, last_faint).clamp_min(last)
    return torch.where(empty, 0.0, first), torch.where(empty, float(len(idx) - 1), last) + 1


def _first_last(mask: torch.Tensor, axis: int, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First and last index of the lines where `mask` (B, H, W) holds anything; (n, -1) for none."""
    hit = mask.any(axis)  # (B, n)
    return (torch.where(hit, idx, torch.full_like(idx, len(idx))).amin(1),
            torch.where(hit, idx, torch.full_like(idx, -1)).amax(1))


def _noise(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """Additive Gaussian noise of a random std up to noise_std."""
    on, u = _chosen(len(x), cfg.noise_p, g, x.device)
    z = torch.randn(x.shape, generator=g, device=g.device).to(x.device, x.dtype)
    return x + on * (cfg.noise_std * u).view(-1, 1, 1, 1) * z


def _fog(x: torch.Tensor, cfg: AugmentConfig, g: torch.Generator) -> torch.Tensor:
    """A smooth haze (bicubic-upsampled 4x4 noise) of random strength up to 0.4 added everywhere."""
    on, u = _chosen(len(x), cfg.fog_p, g, x.device)
    coarse = _rand(len(x), 16, g, x.device).view(-1, 1, 4, 4)
    haze = F.interpolate(coarse, size=x.shape[-2:], mode="bicubic", align_corners=False).clamp(0, 1)
    return x + on * (0.4 * u).view(-1, 1, 1, 1) * haze


def _continental(x: torch.Tensor, labels: torch.Tensor, cfg: AugmentConfig, g: torch.Generator):
    """European styles MNIST lacks: a bar across the stem of a 7 (at 45-70% of the ink's height,
    0.3-0.6 of the height wide) and a flag from the top of a 1 down to the left (0.2-0.5 of the height
    long, 20-50 degrees below horizontal). Other digits are untouched."""
    b, _, h, w = x.shape
    on, _ = _chosen(b, cfg.continental_p, g, x.device)
    u = _rand(b, 4, g, x.device)
    ink = x[:, 0] > 0.4  # (B,H,W)
    rows = ink.any(2).to(x.dtype)  # (B,H) rows holding ink
    idx = torch.arange(h, device=x.device, dtype=x.dtype)
    top = torch.where(rows > 0, idx, torch.full_like(idx, h)).amin(1)  # (B,)
    bottom = torch.where(rows > 0, idx, torch.full_like(idx, -1)).amax(1)
    height = (bottom - top).clamp_min(1)
    cols = torch.arange(w, device=x.device, dtype=x.dtype)

    def centre_col(row):  # mean ink column on row `row` (B,), the image's mean if that row is empty
        line = x[torch.arange(b), 0, row.long().clamp(0, h - 1)]  # (B,W)
        whole = x[:, 0].sum(1)
        line = torch.where(line.sum(1, keepdim=True) > 0, line, whole)
        return (line * cols).sum(1) / line.sum(1).clamp_min(1e-6)

    bar_y = top + (0.45 + 0.25 * u[:, 0]) * height
    half = (0.15 + 0.15 * u[:, 1]) * height
    bar_x = centre_col(bar_y)
    length, angle = (0.2 + 0.3 * u[:, 2]) * height, math.radians(20) + math.radians(30) * u[:, 3]
    flag_x = centre_col(top)
    seven = torch.stack([torch.stack([bar_x - half, bar_y], 1), torch.stack([bar_x + half, bar_y], 1)])
    one = torch.stack([torch.stack([flag_x, top], 1),
                       torch.stack([flag_x - length * torch.cos(angle), top + length * torch.sin(angle)], 1)])
    is7 = (labels == 7).to(x.device)[:, None]
    p0, p1 = torch.where(is7, seven[0], one[0]), torch.where(is7, seven[1], one[1])
    stroke, _, _ = _segments(p0 + 0.5, p1 + 0.5, 1.3, (h, w))
    chosen = on * ((labels == 7) | (labels == 1)).to(x.device, x.dtype).view(b, 1, 1, 1)
    return torch.maximum(x, chosen * stroke)
