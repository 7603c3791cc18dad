"""Batched augmentation: invariants, seeding, and exact agreement with simple per-image references."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from digitlab.data.augment import AugmentConfig, _elastic_field, affine_matrices, augment
from digitlab.errors import DigitlabError

FULL = AugmentConfig(rotate=10, translate=0.1, scale=(0.9, 1.1), shear=8, elastic_alpha=1.0, blur_p=0.5)


def images(b=16, h=28, w=28, seed=0):
    """Random ink in the centre, empty border: (B, 1, H, W) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(b, 1, h, w)
    x[:, :, 6:h - 6, 6:w - 6] = torch.rand(b, 1, h - 12, w - 12, generator=g)
    return x


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def warp(x, theta):
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def shift_reference(img, dx, dy):
    """Per-image reference: move content right by dx and down by dy pixels, zero fill."""
    out = torch.zeros_like(img)
    h, w = img.shape[-2:]
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        img[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_dtype_range_kept(dtype):
    x = images().to(dtype)
    y = augment(x, FULL, gen())
    assert y.shape == x.shape and y.dtype == dtype
    assert y.min() >= 0 and y.max() <= 1
    assert not torch.equal(y, x)


def test_disabled_config_returns_input():
    x = images()
    assert not AugmentConfig().enabled()
    assert augment(x, AugmentConfig(), gen()) is x


def test_p_zero_leaves_images_unchanged():
    x = images()
    cfg = AugmentConfig(p=0.0, rotate=30, translate=0.2, scale=(0.8, 1.2), shear=10, elastic_alpha=2)
    assert torch.equal(augment(x, cfg, gen()), x)


def test_p_selects_some_images_and_leaves_the_others_exact():
    x = images(b=64)
    y = augment(x, AugmentConfig(p=0.5, rotate=20, translate=0.1), gen(3))
    same = (y - x).flatten(1).abs().amax(1) < 1e-5  # identity grid samples pixel centres exactly
    assert 10 < int(same.sum()) < 54


def test_same_seed_same_output_different_seed_different():
    x = images()
    a, b, c = augment(x, FULL, gen(1)), augment(x, FULL, gen(1)), augment(x, FULL, gen(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("size", [(28, 28), (20, 32)])
def test_integer_translation_equals_zero_filled_roll(size):
    h, w = size
    x = torch.rand(5, 1, h, w, generator=gen(4))  # ink up to the border: zero fill matters
    shifts = [(3, 0), (-2, 1), (0, -4), (5, 5), (-1, -3)]  # (dx, dy) pixels
    frac = torch.tensor([[dx / w, dy / h] for dx, dy in shifts])
    theta = affine_matrices(torch.zeros(5), frac, torch.ones(5), torch.zeros(5), size=size)
    y = warp(x, theta)
    ref = torch.stack([shift_reference(x[i], dx, dy) for i, (dx, dy) in enumerate(shifts)])
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=0)


def test_rotate_90_is_rot90_counter_clockwise():
    x = torch.rand(3, 1, 28, 28, generator=gen(5))
    theta = affine_matrices(torch.full((3,), 90.0), torch.zeros(3, 2), torch.ones(3), torch.zeros(3))
    torch.testing.assert_close(warp(x, theta), torch.rot90(x, 1, dims=(-2, -1)), atol=1e-5, rtol=0)
    theta = affine_matrices(torch.full((3,), -90.0), torch.zeros(3, 2), torch.ones(3), torch.zeros(3))
    torch.testing.assert_close(warp(x, theta), torch.rot90(x, -1, dims=(-2, -1)), atol=1e-5, rtol=0)


def test_batched_augment_matches_per_image_matrices():
    """A full random batch equals warping each image alone with its own matrix (translation-only)."""
    x = images(b=8)
    cfg = AugmentConfig(translate=0.1)
    y = augment(x, cfg, gen(6))
    u = torch.rand(8, 6, generator=gen(6))  # redraw the same parameters: keep, angle, shift x, y, ...
    shift = 0.1 * (2 * u[:, 2:4] - 1)
    for i in range(8):
        theta = affine_matrices(torch.zeros(1), shift[i:i + 1], torch.ones(1), torch.zeros(1))
        torch.testing.assert_close(y[i:i + 1], warp(x[i:i + 1], theta).clamp(0, 1), atol=1e-6, rtol=0)


def test_shear_45_moves_a_pixel_below_centre_to_the_right():
    x = torch.zeros(1, 1, 29, 29)  # odd size: the centre is pixel (14, 14)
    x[0, 0, 18, 14] = 1  # 4 px below the centre
    theta = affine_matrices(torch.zeros(1), torch.zeros(1, 2), torch.ones(1), torch.full((1,), 45.0))
    y = warp(x, theta)
    assert float(y[0, 0, 18, 18]) == pytest.approx(1, abs=1e-5)  # x' = x + tan(45) y


def test_scale_shrinks_ink_and_keeps_centre():
    x = images(b=4)
    theta = affine_matrices(torch.zeros(4), torch.zeros(4, 2), torch.full((4,), 0.5), torch.zeros(4))
    y = warp(x, theta)
    assert y.sum() < 0.5 * x.sum()  # area shrinks by 4x
    assert y[..., :10, :].abs().sum() == 0 and y[..., 18:, :].abs().sum() == 0


def test_blur_keeps_mass_and_lowers_max():
    x = images(b=8)
    y = augment(x, AugmentConfig(blur_p=1.0, blur_sigma=(1.0, 1.5)), gen())
    torch.testing.assert_close(y.sum((1, 2, 3)), x.sum((1, 2, 3)), rtol=1e-4, atol=1e-3)
    assert (y.amax((1, 2, 3)) < x.amax((1, 2, 3))).all()


def test_blur_p_zero_images_untouched():
    x = images(b=32)
    y = augment(x, AugmentConfig(blur_p=0.3), gen(8))
    same = (y == x).flatten(1).all(1)
    assert 5 < int(same.sum()) < 32


def test_elastic_moves_pixels_and_is_seeded():
    x = images(b=32)
    cfg = AugmentConfig(elastic_alpha=1.5, elastic_sigma=4.0)
    y = augment(x, cfg, gen(9))
    assert torch.equal(y, augment(x, cfg, gen(9)))
    assert (y - x).abs().mean() > 0.01
    # a smooth warp locally stretches and squeezes, but keeps the mass on average
    assert abs(float(y.sum() / x.sum()) - 1) < 0.1


def test_elastic_field_is_smooth_with_rms_alpha_pixels():
    b, h, w = 16, 28, 28
    field = _elastic_field(b, h, w, AugmentConfig(elastic_alpha=2.0, elastic_sigma=4.0), gen(), "cpu")
    px = field * torch.tensor([w / 2, h / 2])  # (B, H, W, 2) normalised -> pixels
    torch.testing.assert_close(px.square().mean((1, 2, 3)).sqrt(), torch.full((b,), 2.0))
    step = max((px[:, 1:] - px[:, :-1]).abs().mean(), (px[:, :, 1:] - px[:, :, :-1]).abs().mean())
    assert step < 0.3 * 2.0  # neighbours move nearly together (unsmoothed noise: 1.13 * 2.0)


@pytest.mark.parametrize("kw", [{"p": 1.5}, {"rotate": -1}, {"scale": (1.1, 0.9)}, {"blur_sigma": (0.5,)},
                                {"elastic_sigma": 0}])
def test_invalid_config_is_refused(kw):
    with pytest.raises(DigitlabError, match="invalid augmentation settings") as e:
        AugmentConfig(**kw)
    assert e.value.fix


def test_config_accepts_lists_from_yaml():
    assert AugmentConfig(scale=[0.9, 1.1]).scale == (0.9, 1.1)


def test_rejects_unbatched_input():
    with pytest.raises(DigitlabError, match="shape"):
        augment(torch.rand(28, 28), FULL, gen())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_with_cpu_generator_match_cpu():
    x = images()
    torch.testing.assert_close(augment(x.cuda(), FULL, gen(1)).cpu(), augment(x, FULL, gen(1)), atol=1e-4, rtol=0)


# --- style augmentation ------------------------------------------------------------------------

STYLE = AugmentConfig(aspect=1.5, stroke_p=0.5, lowres_p=0.3, binarize_p=0.3, gamma=1.5, broken_p=0.3,
                      lines_p=0.3, noise_p=0.3)


def strokes(b=32):
    """Bars 3 px wide, like MNIST strokes: (B, 1, 28, 28)."""
    x = torch.zeros(b, 1, 28, 28)
    x[:, :, 6:22, 12:15] = 1.0
    x[:, :, 6:9, 8:20] = 1.0
    return x


def test_style_augmentation_is_seeded_and_keeps_shape_and_range():
    x = strokes()
    a, b, c = augment(x, STYLE, gen(1)), augment(x, STYLE, gen(1)), augment(x, STYLE, gen(2))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("field", ["stroke_p", "lowres_p", "binarize_p", "broken_p", "lines_p", "noise_p", "refit_p", "fill_p"])
def test_each_style_with_p_zero_changes_nothing_and_p_one_changes_every_image(field):
    x = F.avg_pool2d(strokes(8), 3, 1, 1)  # grey edges: binarising changes them
    assert torch.equal(augment(x, AugmentConfig(**{field: 0.0}), gen()), x)
    y = augment(x, AugmentConfig(**{field: 1.0}), gen())
    assert ((y - x).flatten(1).abs().amax(1) > 0).sum() >= 7  # a drawn amount can be ~0 for one image


def test_stroke_width_thickens_and_thins_by_sign():
    x = strokes(64)
    y = augment(x, AugmentConfig(stroke_p=1.0, stroke=1.0), gen(5))
    ink, ink0 = y.flatten(1).sum(1), x.flatten(1).sum(1)
    assert (ink > ink0 * 1.2).sum() > 15 and (ink < ink0 * 0.8).sum() > 15  # both directions drawn
    full = augment(x, AugmentConfig(stroke_p=1.0, stroke=2.0), gen(5))
    assert full.flatten(1).sum(1).max() > ink.max()  # two steps grow more than one


def test_broken_cuts_ink_and_lines_add_it():
    x = strokes(64)
    broken = augment(x, AugmentConfig(broken_p=1.0, broken_holes=30), gen())
    lines = augment(x, AugmentConfig(lines_p=1.0), gen())
    assert (broken <= x).all() and broken.sum() < x.sum() * 0.9
    assert (lines >= x).all() and lines.sum() > x.sum()


def test_broken_on_ink_cuts_the_strokes_it_is_asked_to():
    x = strokes(256)
    anywhere = (x - augment(x, AugmentConfig(broken_p=1.0, broken_holes=3), gen())).sum()
    on_ink = (x - augment(x, AugmentConfig(broken_p=1.0, broken_holes=0, broken_ink_holes=3), gen())).sum()
    assert on_ink > 3 * anywhere  # anywhere, most of the 3 holes fall on the background
    one = augment(x, AugmentConfig(broken_p=1.0, broken_holes=0, broken_ink_holes=1), gen())
    assert on_ink > 2 * (x - one).sum()  # the count is holes per image: 3 cut more than 1


def test_binarise_gives_zero_one_pixels_and_aspect_widens():
    x = F.avg_pool2d(strokes(16), 3, 1, 1)  # grey edges
    y = augment(x, AugmentConfig(binarize_p=1.0), gen())
    assert set(y.unique().tolist()) <= {0.0, 1.0}
    wide = augment(x, AugmentConfig(aspect=2.0), gen(3))
    cols = lambda t: (t.amax(dim=2) > 0.3).sum(-1).float()  # noqa: E731  ink columns per image
    assert (cols(wide) != cols(x)).any() and cols(wide).max() > cols(x).max()


@pytest.mark.parametrize("bad", [{"stroke_p": 1.5}, {"aspect": 0.5}, {"gamma": 0.9}, {"lowres": (1, 8)},
                                 {"stroke": 3}, {"noise_std": -1}, {"lines_segments": 0}])
def test_bad_style_settings_name_the_field(bad):
    with pytest.raises(DigitlabError, match=list(bad)[0]):
        AugmentConfig(**bad)


def test_continental_marks_only_ones_and_sevens_and_needs_labels():
    x = strokes(40)
    labels = torch.arange(40) % 10
    y = augment(x, AugmentConfig(continental_p=1.0), gen(), labels=labels)
    changed = (y - x).flatten(1).abs().amax(1) > 0
    assert changed.tolist() == [bool(d in (1, 7)) for d in labels.tolist()]
    assert (y >= x).all()  # strokes are added, never removed
    with pytest.raises(DigitlabError, match="continental_p needs the digits' labels"):
        augment(x, AugmentConfig(continental_p=0.5), gen())


def test_fog_brightens_the_background_smoothly():
    y = augment(torch.zeros(16, 1, 28, 28), AugmentConfig(fog_p=1.0), gen())
    assert y.mean() > 0.02 and y.max() <= 0.4
    assert y[:, :, 1:].sub(y[:, :, :-1]).abs().max() < 0.1  # smooth: no sharp edges added


def test_zigzag_lines_add_more_ink_than_single_segments():
    x = torch.zeros(64, 1, 28, 28)
    one = augment(x, AugmentConfig(lines_p=1.0), gen(4)).sum()
    zigzag = augment(x, AugmentConfig(lines_p=1.0, lines_segments=3), gen(4)).sum()
    assert zigzag > 1.5 * one  # 1-3 segments drawn, 2 on average


def test_lines_radius_draws_thinner_lines_and_is_validated():
    x = torch.zeros(64, 1, 28, 28)
    default = augment(x, AugmentConfig(lines_p=1.0), gen(4)).sum()
    thin = augment(x, AugmentConfig(lines_p=1.0, lines_radius=(0.5, 0.5)), gen(4)).sum()
    ranged = augment(x, AugmentConfig(lines_p=1.0, lines_radius=[0.5, 1.25]), gen(4)).sum()  # YAML gives lists
    assert thin < 0.6 * default and thin < ranged < default  # same lines, each drawn thinner
    with pytest.raises(DigitlabError, match="lines_radius"):
        AugmentConfig(lines_radius=(0, 1))


def _fitted(x):
    """Each image through the product's preprocessing: what a real input looks like to the model."""
    from digitlab.data.preprocess import to_mnist_array
    return torch.stack([torch.from_numpy(to_mnist_array(img[0].numpy())) for img in x])[:, None]


def test_refit_does_what_preprocessing_does_to_a_digit_with_a_stray_line():
    from digitlab.data import synthetic
    digits = _fitted(synthetic.load_split("test")[0][:48, None].float() / 255)
    refit = AugmentConfig(refit_p=1.0)
    assert (augment(digits, refit, gen()) - digits).abs().max() < 0.01  # already fitted: unchanged
    lined = augment(digits, AugmentConfig(lines_p=1.0, lines_segments=3), gen(2))
    target = _fitted(lined)
    assert (lined - target).abs().mean() > 0.05  # the line widened the box: preprocessing shrinks the digit
    assert (augment(lined, refit, gen()) - target).abs().mean() < 0.3 * (lined - target).abs().mean()


def test_fill_stretches_the_ink_to_the_square_as_a_size_normalised_scan_looks_after_preprocessing():
    from PIL import Image

    from digitlab.data import synthetic
    digits = _fitted(synthetic.load_split("test")[0][:48, None].float() / 255)

    def stretched(img):  # a collection's digit: cropped to its ink, resized to a square
        a = img[0].numpy()
        rows, cols = np.nonzero(a > 0.2 * a.max())
        crop = a[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        return np.array(Image.fromarray(crop).resize((20, 20), Image.Resampling.BILINEAR))  # a writable copy for torch
    target = _fitted(torch.stack([torch.from_numpy(stretched(d)) for d in digits])[:, None])
    filled = augment(digits, AugmentConfig(fill_p=1.0), gen())
    assert (digits - target).abs().mean() > 0.05  # narrow digits (a 1) change a lot
    # what is left is resampling (the target is resampled twice) and the faint rim kept in the box
    assert (filled - target).abs().mean() < 0.6 * (digits - target).abs().mean()
    ink = filled[:, 0] > 0.2
    assert ink.any(1).sum(1).float().mean() > 18.5 and ink.any(2).sum(1).float().mean() > 18.5  # 20 px box
    half = augment(digits, AugmentConfig(fill_p=0.5), gen())
    changed = ((half - digits).abs().amax(dim=(1, 2, 3)) > 0.01).float().mean()
    assert 0.25 < changed < 0.75


def test_styles_p_leaves_that_share_of_the_images_only_warped():
    x = F.avg_pool2d(strokes(200), 3, 1, 1)
    heavy = dict(stroke_p=1.0, lines_p=1.0, noise_p=1.0)
    y = augment(x, AugmentConfig(styles_p=0.6, **heavy), gen(3))
    untouched = ((y - x).flatten(1).abs().amax(1) == 0).float().mean()
    assert 0.3 < untouched < 0.5  # ~40% only warped (no warp here: unchanged), the rest styled
    same = augment(x, AugmentConfig(styles_p=1.0, **heavy), gen(3))
    assert torch.equal(same, augment(x, AugmentConfig(**heavy), gen(3)))
