"""The benchmark's six noise kinds: documented statistics at s=0 and s=1, range, seeding, mixed batches."""

import pytest
import torch

from digitlab.data.noise import NOISE_KINDS, apply_noise, sample_noise
from digitlab.errors import DigitlabError

B = 64  # 64 * 784 = 50k pixels per measurement: sampling error of a std is about 0.3%


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def noisy(kind, s, value=0.5, seed=0):
    x = torch.full((B, 1, 28, 28), value)
    kinds = torch.full((B,), NOISE_KINDS.index(kind))
    return apply_noise(x, kinds, torch.full((B,), float(s)), gen(seed))


def sigma_from_clipped_fraction(frac, gap):
    """sigma of N(0, sigma^2) given P(noise > gap) = frac (the fraction clipped at one end)."""
    return gap / float(torch.special.ndtri(torch.tensor(1 - frac, dtype=torch.float64)))


@pytest.mark.parametrize("s, sigma", [(0.0, 0.05), (1.0, 0.50)])
def test_gaussian(s, sigma):
    y = noisy("gaussian", s)
    if s == 0:  # 0.5 +- 10 sigma: no clipping
        assert float(y.std()) == pytest.approx(sigma, rel=0.03)
        assert float(y.mean()) == pytest.approx(0.5, abs=0.002)
    else:  # heavy clipping: read sigma from the clipped tails, P(n > 0.5) each side
        for frac in ((y == 1).float().mean(), (y == 0).float().mean()):
            assert sigma_from_clipped_fraction(float(frac), 0.5) == pytest.approx(sigma, rel=0.05)


@pytest.mark.parametrize("s, a", [(0.0, 0.10), (1.0, 0.60)])
def test_uniform(s, a):
    y = noisy("uniform", s)
    if s == 0:
        assert float(y.min()) == pytest.approx(0.5 - a, abs=1e-3)
        assert float(y.max()) == pytest.approx(0.5 + a, abs=1e-3)
        assert float(y.std()) == pytest.approx(a / 3 ** 0.5, rel=0.03)
    else:  # U(-0.6, 0.6) around 0.5: 0.1 / 1.2 of the mass is clipped on each side
        assert float((y == 1).float().mean()) == pytest.approx(0.1 / 1.2, rel=0.05)
        assert float((y == 0).float().mean()) == pytest.approx(0.1 / 1.2, rel=0.05)
        inside = y[(y > 0) & (y < 1)]
        assert float(inside.std()) == pytest.approx(1.0 / 12 ** 0.5, rel=0.03)  # U(0, 1) inside


@pytest.mark.parametrize("s, p", [(0.0, 0.05), (1.0, 0.50)])
def test_salt_pepper(s, p):
    y = noisy("salt_pepper", s)
    assert bool(((y == 0) | (y == 1) | (y == 0.5)).all())
    assert float((y != 0.5).float().mean()) == pytest.approx(p, rel=0.05)
    assert float((y == 0).float().mean()) == pytest.approx(p / 2, rel=0.07)
    assert float((y == 1).float().mean()) == pytest.approx(p / 2, rel=0.07)


@pytest.mark.parametrize("s, p", [(0.0, 0.05), (1.0, 0.50)])
def test_random_impulse(s, p):
    y = noisy("random_impulse", s)
    changed = y[y != 0.5]
    assert changed.numel() / y.numel() == pytest.approx(p, rel=0.05)
    assert float(changed.mean()) == pytest.approx(0.5, abs=0.02)  # U(0, 1) values
    assert float(changed.var()) == pytest.approx(1 / 12, rel=0.07)


@pytest.mark.parametrize("s, lam, value", [(0.0, 100.0, 0.5), (1.0, 5.0, 0.1)])
def test_poisson(s, lam, value):
    # at lambda 5 use x = 0.1 (mean count 0.5) so that counts above 5 (clipped) are negligible
    y = noisy("poisson", s, value=value)
    counts = y * lam
    assert torch.allclose(counts, counts.round(), atol=1e-4)  # values on the lattice k / lambda
    assert float(y.mean()) == pytest.approx(value, rel=0.03)
    assert float(y.var()) == pytest.approx(value / lam, rel=0.05)  # Var[Poisson(lam x) / lam] = x / lam


@pytest.mark.parametrize("s, sigma", [(0.0, 0.10), (1.0, 1.00)])
def test_speckle(s, sigma):
    if s == 0:
        y = noisy("speckle", s, value=0.5)
        assert float(y.std()) / 0.5 == pytest.approx(sigma, rel=0.03)  # relative std
        assert float(y.mean()) == pytest.approx(0.5, abs=0.002)
    else:  # x (1 + n) with x = 0.2: above 1 needs n > 4 (negligible); below 0 needs n < -1 (clipped)
        y = noisy("speckle", s, value=0.2)
        assert sigma_from_clipped_fraction(float((y == 0).float().mean()), 1.0) == pytest.approx(sigma, rel=0.05)
        upper = (y[y > 0.2] - 0.2) / 0.2  # the upper half of n, unclipped
        assert float(upper.square().mean().sqrt()) == pytest.approx(sigma, rel=0.03)


def test_zero_image_stays_zero_for_multiplicative_kinds():
    x = torch.zeros(B, 1, 8, 8)
    for kind in ("poisson", "speckle"):
        y = apply_noise(x, torch.full((B,), NOISE_KINDS.index(kind)), torch.rand(B, generator=gen()), gen())
        assert bool((y == 0).all())


def test_output_always_in_unit_range():
    x = torch.rand(600, 1, 28, 28, generator=gen(1))
    kinds = torch.arange(600) % 6
    for s in (torch.zeros(600), torch.ones(600), torch.rand(600, generator=gen(2))):
        y = apply_noise(x, kinds, s, gen(3))
        assert y.shape == x.shape and y.dtype == x.dtype
        assert float(y.min()) >= 0 and float(y.max()) <= 1


def test_reproducible_by_seed():
    x = torch.rand(32, 1, 28, 28, generator=gen(1))
    a, ka, sa = sample_noise(x, gen(5))
    b, kb, sb = sample_noise(x, gen(5))
    assert torch.equal(a, b) and torch.equal(ka, kb) and torch.equal(sa, sb)
    c, _, _ = sample_noise(x, gen(6))
    assert not torch.equal(a, c)


def test_mixed_batch_equals_per_kind_application():
    x = torch.rand(60, 1, 28, 28, generator=gen(1))
    kinds = torch.randint(6, (60,), generator=gen(2))
    strengths = torch.rand(60, generator=gen(3))
    mixed = apply_noise(x, kinds, strengths, gen(4))
    for k in range(6):
        alone = apply_noise(x, torch.full((60,), k), strengths, gen(4))
        sel = kinds == k
        assert sel.any()
        assert torch.equal(mixed[sel], alone[sel]), NOISE_KINDS[k]


def test_sample_noise_draws_kinds_and_strengths_uniformly():
    x = torch.rand(1200, 1, 4, 4, generator=gen(1))
    noisy_x, kinds, strengths = sample_noise(x, gen(7))
    counts = torch.bincount(kinds, minlength=6)
    assert counts.shape == (6,) and bool((counts > 150).all())  # expected 200 each
    assert float(strengths.min()) >= 0 and float(strengths.max()) <= 1
    assert float(strengths.mean()) == pytest.approx(0.5, abs=0.03)
    torch.testing.assert_close(noisy_x, apply_noise(x, kinds, strengths, _after_draws(7, 1200)))


def _after_draws(seed, b):
    """A generator advanced past sample_noise's own draws of kinds and strengths."""
    g = gen(seed)
    torch.randint(6, (b,), generator=g)
    torch.rand(b, generator=g)
    return g


@pytest.mark.parametrize("kinds, strengths, message", [
    (torch.full((4,), 6), torch.zeros(4), "kinds must be integers 0..5"),
    (torch.full((4,), -1), torch.zeros(4), "kinds"),
    (torch.zeros(4, dtype=torch.long), torch.full((4,), 1.5), "strengths must lie in"),
    (torch.zeros(3, dtype=torch.long), torch.zeros(4), "shape"),
])
def test_bad_arguments(kinds, strengths, message):
    with pytest.raises(DigitlabError, match=message) as e:
        apply_noise(torch.rand(4, 1, 8, 8), kinds, strengths, gen())
    assert e.value.fix


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cuda_generator():
    x = torch.rand(16, 1, 28, 28, device="cuda")
    g1, g2 = (torch.Generator(device="cuda").manual_seed(1) for _ in range(2))
    a, _, _ = sample_noise(x, g1)
    b, _, _ = sample_noise(x, g2)
    assert a.device.type == "cuda" and torch.equal(a, b)
    assert float(a.min()) >= 0 and float(a.max()) <= 1
