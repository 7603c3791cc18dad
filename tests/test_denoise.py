"""Denoising: metrics against known values, the frozen set, models, bench methods, command, training."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from digitlab import io
from digitlab.data.noise import NOISE_KINDS
from digitlab.errors import DigitlabError
from digitlab.models import registry
from digitlab.tasks import denoise_eval as ev


def _digits(n: int = 16, seed: int = 0) -> torch.Tensor:
    """(n,28,28) uint8 blobs: a bright square on black, somewhere different each time."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(n, 28, 28, dtype=torch.uint8)
    for i in range(n):
        r, c = torch.randint(4, 14, (2,), generator=g).tolist()
        out[i, r:r + 10, c:c + 8] = 255
    return out


# ------------------------------------------------------------------ metrics


def test_psnr_of_known_mse():
    target = torch.full((3, 1, 28, 28), 0.5)
    pred = target + torch.tensor([0.1, 0.01, 0.001]).view(3, 1, 1, 1)  # MSE 1e-2, 1e-4, 1e-6
    assert ev.psnr_per_image(pred, target).tolist() == pytest.approx([20.0, 40.0, 60.0], abs=1e-3)


def test_psnr_of_identical_images_is_capped_by_the_mse_floor():
    x = torch.rand(2, 1, 28, 28)
    assert ev.psnr_per_image(x, x).tolist() == pytest.approx([100.0, 100.0])


def test_ssim_identical_is_one_and_noise_lowers_it():
    x = torch.rand(4, 1, 28, 28)
    assert ev.ssim_per_image(x, x).tolist() == pytest.approx([1.0] * 4, abs=1e-5)
    noisy = (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert (ev.ssim_per_image(noisy, x) < 0.9).all()


def test_a_faint_grey_background_costs_little_psnr_but_much_ssim():
    # Why a Sigmoid-output U-Net scores low SSIM beside a fair PSNR (docs/reproduction.md, R1): digit
    # backgrounds are exactly 0, and SSIM's constant C1 = (0.01)^2 is tiny next to a 0.02 offset there.
    clean = _digits().float().unsqueeze(1) / 255
    grey = torch.where(clean == 0, torch.full_like(clean, 0.02), clean)
    assert ev.psnr_per_image(grey, clean).mean() > 30
    assert ev.ssim_per_image(grey, clean).mean() < 0.75


def test_score_and_composite_formulas():
    assert ev.score(30, 1.0) == pytest.approx(1.0)
    assert ev.score(15, 0.6) == pytest.approx(0.0)
    assert ev.composite(30, 0.9) == pytest.approx(60.0)


def test_summarize_groups_by_kind_and_band():
    n = 12
    clean = torch.rand(n, 1, 28, 28)
    kinds = torch.arange(n) % 6
    strengths = torch.tensor([0.0, 0.1, 0.25, 0.3, 0.5, 0.6, 0.75, 0.8, 1.0, 0.2, 0.4, 0.9])
    s = ev.summarize(ev.per_image(clean, clean), kinds, strengths, kind_pred=kinds)
    assert s["n"] == n and s["kind_acc"] == 1.0 and s["psnr"] == pytest.approx(100.0)
    assert [s["per_kind"][k]["n"] for k in NOISE_KINDS] == [2] * 6
    assert [b["n"] for b in s["per_band"].values()] == [3, 3, 2, 4]  # 1.0 falls in the last band
    assert torch.tensor(s["kind_confusion"]).diag().tolist() == [2] * 6
    assert "kind_acc" not in ev.summarize(ev.per_image(clean, clean), kinds, strengths)


# ------------------------------------------------------------------ frozen set


def test_frozen_set_identical_across_runs():
    a, b = ev.frozen_test_set(_digits()), ev.frozen_test_set(_digits())
    assert a["sha256"] == b["sha256"]
    assert torch.equal(a["noisy"], b["noisy"]) and torch.equal(a["kinds"], b["kinds"])
    assert not torch.equal(a["noisy"], a["clean"])
    other = ev.noisy_set(a["clean"], ev.FROZEN_SEED + 1)
    assert ev.fingerprint(*other) != a["sha256"]


def test_frozen_set_of_real_mnist_matches_the_recorded_hash(mnist_dir):
    from digitlab.data import mnist

    images, _ = mnist.load_split("test", "mnist", str(mnist_dir))
    assert ev.frozen_test_set(images)["sha256"] == ev.FROZEN_SHA256


def test_bench_refuses_a_set_with_another_hash():
    from digitlab.bench.denoise import check_hash

    check_hash(ev.FROZEN_SHA256)
    with pytest.raises(DigitlabError, match="hashes to"):
        check_hash("0" * 64)


# ------------------------------------------------------------------ models


def test_unet_r1_is_r1s_architecture():
    m = registry.create("unet_r1")
    convs = [mod for mod in m.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 128, 128, 64, 64, 1]
    assert convs[6].in_channels == 256 and convs[8].in_channels == 128  # concatenated skips
    assert sum(isinstance(mod, torch.nn.BatchNorm2d) for mod in m.modules()) == 10
    # R1's text says "about 1.2M"; its own layer list counts 1,862,977, plus the 1,542-parameter kind head.
    assert registry.count_params(m) == 1_864_519
    assert registry.count_params(registry.create("unet_r1", kind_head=False)) == 1_862_977


@pytest.mark.parametrize("name,args", [
    ("unet_r1", {}), ("unet_r1", {"skip": "add"}), ("unet_r1", {"skip": "none", "batchnorm": False}),
    ("unet_r1", {"bottleneck": 0}), ("unet_r1", {"widths": [8, 16, 32], "bottleneck": 64}),
    ("unet_r1", {"activation": "silu", "widths": [8, 16]}), ("denoiser", {}), ("denoiser", {"residual": False}),
    ("denoiser", {"head": "multi"}),
])
def test_denoise_models_return_clean_image_and_kind_logits(name, args):
    m = registry.create(name, **args).eval()
    clean, logits = m(torch.rand(3, 1, 28, 28))
    assert clean.shape == (3, 1, 28, 28) and logits.shape == (3, 6)
    assert clean.min() >= 0 and clean.max() <= 1


def test_denoiser_is_residual_and_smaller_than_r1():
    m = registry.create("denoiser").eval()
    assert registry.count_params(m) < registry.count_params(registry.create("unet_r1"))
    torch.nn.init.zeros_(m.out.weight), torch.nn.init.zeros_(m.out.bias)  # predicted noise r = 0
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(m(x)[0], x)


def test_noise_stats_head_reads_the_residual_without_steering_the_denoiser():
    m = registry.create("denoiser", widths=[8, 16], bottleneck=16).train()
    x = torch.rand(1, 1, 28, 28)  # a last training batch of one image must work (no BatchNorm in the head)
    clean, logits = m(x)
    # gradients of the kind logits reach the head but not the denoiser through the (detached) clean estimate
    logits.sum().backward()
    assert m.kind[0].weight.grad.abs().sum() > 0
    assert m.out.weight.grad is None or m.out.weight.grad.abs().sum() == 0
    # the stats see the residual: the same noisy image with another clean estimate gives other features
    stats = m.stats(x, clean)
    assert not torch.allclose(stats, m.stats(x, torch.zeros_like(clean)))


def test_noise_stats_match_hand_computed_moments():
    from digitlab.models.unet import NoiseStats
    clean = torch.zeros(1, 1, 28, 28)
    clean[..., :14, :] = 1.0  # half background (band 0), half full ink (last band)
    noisy = clean.clone()
    noisy[..., 14:, :] = 0.5  # background residual 0.5 everywhere; ink untouched (r = 0, all clipped at 1)
    f = NoiseStats().features(noisy, clean).view(5, 5)
    assert torch.allclose(f[0, :3], torch.log(torch.tensor([0.25, 0.5, 0.0625]) + 1e-6))
    assert f[0, 3:].tolist() == [0.0, 0.0] and f[4, 3:].tolist() == [0.0, 1.0]
    assert torch.allclose(f[4, :3], torch.full((3,), math.log(1e-6)))
    assert torch.allclose(f[1:4, :3], torch.full((3, 3), math.log(1e-6)))  # empty bands: the log floor
    assert f[1:4, 3:].abs().sum() == 0


def test_bad_kind_head_is_a_clear_error():
    with pytest.raises(DigitlabError, match="kind head"):
        registry.create("denoiser", head="attention")


def test_model_without_kind_head_returns_zero_logits():
    m = registry.create("unet_r1", widths=[8, 16], bottleneck=16, kind_head=False)
    assert not ev.has_kind_head(m)
    assert torch.equal(m(torch.rand(2, 1, 28, 28))[1], torch.zeros(2, 6))


def test_bad_skip_is_a_clear_error():
    with pytest.raises(DigitlabError, match="skip"):
        registry.create("unet_r1", skip="attention")


# ------------------------------------------------------------------ bench methods


def test_classical_methods_on_the_same_harness():
    from digitlab.bench.denoise import bench_method

    data = ev.frozen_test_set(_digits(12))
    results = {m: bench_method(m, data) for m in ("noisy", "median3", "gaussian", "tv", "nlm")}
    ref = ev.summarize(ev.per_image(data["noisy"], data["clean"]), data["kinds"], data["strengths"])
    assert results["noisy"]["psnr"] == pytest.approx(ref["psnr"])
    for r in results.values():
        assert r["n"] == 12 and "kind_acc" not in r and math.isfinite(r["psnr"])
    with pytest.raises(DigitlabError, match="unknown denoising method"):
        bench_method("wiener", data)


# ------------------------------------------------------------------ training and the command


def _tiny_cfg(mnist_dir, **extra):
    from digitlab.config import resolve

    return resolve("denoise", None, {"model": "denoiser", "model_args": {"widths": [8, 16], "bottleneck": 16},
                                     "data_dir": str(mnist_dir), "epochs": 2, "batch_size": 64, "subset": 0.02,
                                     "threads": 1, "progress": False, "tensorboard": False,
                                     "task_args": {"val_limit": 200, "test_limit": 100}, **extra})


def test_tiny_training_run_lowers_validation_mse(mnist_dir, tmp_path):
    from digitlab.engine import loop
    from digitlab.engine import run as runs
    from digitlab.tasks.denoise import DenoiseTask

    cfg = _tiny_cfg(mnist_dir)
    task = DenoiseTask()
    task.setup(cfg, torch.device("cpu"))
    torch.manual_seed(cfg.seed)
    before = task.evaluate(task.build_model(cfg), "val")["mse"]
    run = loop.train(cfg, tmp_path / "run", quiet=True)
    after = task.evaluate(runs.load_model(run)[0], "val")["mse"]
    assert after < 0.8 * before
    for name in ("examples.png", "error_heatmap.png", "kind_confusion.png"):
        assert (run / "figures" / name).is_file()
    table = (run / "denoise_table.md").read_text()
    assert "kind salt_pepper" in table and "strength s>=0.75" in table
    # what R1 showed beside PSNR/SSIM: per-layer gradient norms per epoch, and where the errors sit
    grads = io.read_json(run / "grad_norms.json")
    assert len(grads["epochs"]) == cfg.epochs and {"down.0", "down.1", "bottleneck", "out"} <= set(grads["layers"])
    assert all(v > 0 for epoch in grads["epochs"] for v in epoch.values())
    errors = io.read_json(run / "error_map.json")
    assert errors["n"] == 100 and np.asarray(errors["mean_abs_error"]).shape == (28, 28)
    assert 0 < np.mean(errors["mean_abs_error"]) < 0.5

    # the command on a real file: a 28x28 PNG and the identified kind with its probability
    from digitlab.commands import denoise as cmd

    src = tmp_path / "noisy.png"
    arr = np.full((56, 56), 255, np.uint8)
    arr[10:46, 24:32] = 0  # a dark "1" on white, as a scan would be
    Image.fromarray(arr).save(src)
    out = tmp_path / "clean.png"
    assert cmd.run(SimpleNamespace(paths=[run, src], output=out, out_dir=None, scale=1, json=False)) == 0
    assert Image.open(out).size == (28, 28)
    with pytest.raises(DigitlabError, match="several images"):
        cmd.run(SimpleNamespace(paths=[run, src, src], output=out, out_dir=None, scale=1, json=False))
