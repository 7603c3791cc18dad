"""The six noise kinds of the denoising benchmark (`digitlab bench denoise`), applied to whole batches.

Each image carries one kind at its own strength s in [0, 1]:

| kind           | at strength s                                                        |
|----------------|----------------------------------------------------------------------|
| gaussian       | add N(0, sigma^2), sigma = 0.05 + 0.45 s                              |
| uniform        | add U(-a, a), a = 0.10 + 0.50 s                                       |
| salt_pepper    | a fraction p = 0.05 + 0.45 s of the pixels is set to 0 or 1 (half each) |
| random_impulse | a fraction p = 0.05 + 0.45 s of the pixels is set to U(0, 1) values   |
| poisson        | Poisson(lambda x) / lambda, lambda = 100 * 20^(-s) (100 down to 5)    |
| speckle        | x (1 + n), n ~ N(0, sigma^2), sigma = 0.10 + 0.90 s                   |

Results are clipped to [0, 1]. Every random tensor is drawn for the whole batch in a fixed order,
whatever the kinds, so an image's noise depends only on the generator state, its position, its
kind and its strength: a mixed batch equals each kind applied to the whole batch, then selected.
"""

from __future__ import annotations

import torch

from digitlab.errors import DigitlabError

NOISE_KINDS = ("gaussian", "uniform", "salt_pepper", "random_impulse", "poisson", "speckle")
GAUSSIAN, UNIFORM, SALT_PEPPER, RANDOM_IMPULSE, POISSON, SPECKLE = range(len(NOISE_KINDS))


def apply_noise(x: torch.Tensor, kinds: torch.Tensor, strengths: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
    """Noise each image of x (B, 1, H, W) in [0, 1] with its kind (B,) and strength (B,); clipped.

    Random numbers come from `generator` on its own device (pass one on x's device for speed).
    torch.poisson accepts the generator in this torch, so the poisson kind is seeded too.
    """
    _check(x, kinds, strengths)
    b = x.shape[0]
    k = kinds.to(x.device).view(b, 1, 1, 1)
    s = strengths.to(x.device, x.dtype).view(b, 1, 1, 1)
    n = _draw(torch.randn, x, generator)  # (B, 1, H, W) N(0, 1): gaussian, speckle
    u = _draw(torch.rand, x, generator)  # U(0, 1): uniform noise, impulse values, salt-or-pepper
    hit = _draw(torch.rand, x, generator) < 0.05 + 0.45 * s  # pixels replaced by the impulse kinds
    lam = 100 * 20 ** (-s)  # (B, 1, 1, 1)
    rate = (lam * x).clamp_min(0).float().to(generator.device)  # sampled where the generator lives
    counts = torch.poisson(rate, generator=generator).to(x.device, x.dtype)

    add = torch.where(k == GAUSSIAN, (0.05 + 0.45 * s) * n, torch.zeros_like(x))
    add = torch.where(k == UNIFORM, (0.10 + 0.50 * s) * (2 * u - 1), add)
    add = torch.where(k == SPECKLE, x * (0.10 + 0.90 * s) * n, add)
    out = x + add
    out = torch.where((k == SALT_PEPPER) & hit, (u < 0.5).to(x.dtype), out)
    out = torch.where((k == RANDOM_IMPULSE) & hit, u, out)
    out = torch.where(k == POISSON, counts / lam, out)
    return out.clamp_(0, 1)


def sample_noise(x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The benchmark's draw: kind uniform over the six, strength ~ U[0, 1]; returns (noisy, kinds, strengths)."""
    b = x.shape[0]
    kinds = torch.randint(len(NOISE_KINDS), (b,), generator=generator, device=generator.device).to(x.device)
    strengths = torch.rand(b, generator=generator, device=generator.device).to(x.device)
    return apply_noise(x, kinds, strengths, generator), kinds, strengths


def _draw(fn, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A full-batch random tensor, drawn on the generator's device, returned on x's."""
    return fn(x.shape, generator=generator, device=generator.device).to(x.device, x.dtype)


def _check(x: torch.Tensor, kinds: torch.Tensor, strengths: torch.Tensor) -> None:
    if x.dim() != 4 or kinds.shape != (x.shape[0],) or strengths.shape != (x.shape[0],):
        raise DigitlabError(f"apply_noise expects x (B, C, H, W) with kinds and strengths of shape (B,); "
                            f"got {tuple(x.shape)}, {tuple(kinds.shape)}, {tuple(strengths.shape)}",
                            "pass one kind index and one strength per image")
    # sync point on GPU: cheap, and a bad kind would otherwise silently leave images clean
    if kinds.numel() and (int(kinds.min()) < 0 or int(kinds.max()) >= len(NOISE_KINDS)):
        raise DigitlabError(f"noise kinds must be integers 0..{len(NOISE_KINDS) - 1} ({', '.join(NOISE_KINDS)})",
                            "index NOISE_KINDS, e.g. NOISE_KINDS.index('gaussian')")
    if strengths.numel() and (float(strengths.min()) < 0 or float(strengths.max()) > 1):
        raise DigitlabError("noise strengths must lie in [0, 1]", "clamp or redraw the strengths into [0, 1]")
