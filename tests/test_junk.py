"""'Not a digit': the generated families are what they say, outlier exposure flattens the output on
them, and every recognition run stores a calibration that verdict and `bench junk` use."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from digitlab import config, verdict
from digitlab.bench import junk as bench_junk
from digitlab.data import junk, synthetic
from digitlab.engine import loop
from digitlab.errors import DigitlabError
from digitlab.tasks.recognize import RecognizeTask, uniform_kl

SYNTH_FAMILIES = ["marks", "scribble", "two_digits", "letters"]  # all but fashion: no data set needed


def digits() -> torch.Tensor:
    return synthetic.load_split("train")[0]


@pytest.mark.parametrize("family", junk.FAMILIES)
def test_every_family_is_prepared_like_a_real_input(family):
    fashion = torch.zeros(30, 28, 28, dtype=torch.uint8)
    fashion[:, 4:24, 6:22] = 180  # a grey "shirt" on black, as Fashion-MNIST draws them
    x = junk.make(family, 30, seed=0, digits=digits(), fashion=fashion)
    assert x.dtype == torch.uint8 and x.shape[1:] == (28, 28) and 20 <= len(x) <= 30  # blanks dropped
    f = x.float()
    assert (f.amax((1, 2)) == 255).all()  # to_mnist stretches the ink to full white
    rows = (f.sum(2) * torch.arange(28)).sum(1) / f.sum((1, 2))
    assert ((rows - 14).abs() < 1.5).all()  # centre of mass on MNIST's centre


def bbox(img: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(img > 0.3)
    return int(np.ptp(ys)) + 1, int(np.ptp(xs)) + 1


def test_marks_are_the_shapes_they_name():
    rng = np.random.default_rng(0)
    for _ in range(20):
        dot = junk._mark(rng, "dot")
        h, w = bbox(dot)
        assert (dot > 0.5).sum() / (h * w) > 0.7  # a filled ellipse covers pi/4 of its box
        dash = junk._mark(rng, "dash")
        h, w = bbox(dash)
        assert w > h  # within 35 degrees of horizontal: never a "1"
        ring = junk._mark(rng, "circled_x")
        assert ring[48, 48] > 0 or ring[44:52, 44:52].max() > 0  # the cross runs through the middle


def test_two_digits_are_wider_than_tall_and_letters_leave_out_digit_shapes():
    x = junk.make("two_digits", 20, seed=1, digits=digits()).numpy()
    assert all(w > h for h, w in map(bbox, x / 255))
    assert not set(junk.LETTERS) & set(junk.DIGIT_LIKE)
    assert not set(junk.TRAIN_FONTS) & set(junk.MEASURE_FONTS)


def test_training_and_measuring_images_differ_and_each_is_reproducible():
    a = junk.make("scribble", 10, seed=3, purpose="train")
    assert torch.equal(a, junk.make("scribble", 10, seed=3, purpose="train"))
    assert not torch.equal(a, junk.make("scribble", 10, seed=3, purpose="measure"))
    assert not torch.equal(a, junk.make("scribble", 10, seed=4, purpose="train"))


def test_unknown_family_and_missing_sources_are_clear_errors():
    with pytest.raises(DigitlabError, match="unknown junk family"):
        junk.make("doodles", 5, 0)
    with pytest.raises(DigitlabError, match="Fashion-MNIST"):
        junk.make("fashion", 5, 0)


def smoke(**task_args) -> config.TrainConfig:
    return config.resolve("recognize", "recognize-smoke", {
        "progress": False, "figures": False, "tensorboard": False,
        "task_args": {"junk_size": 300, "junk_families": SYNTH_FAMILIES, **task_args}})


def train_steps(junk_weight: float, steps: int = 40) -> tuple[torch.nn.Module, RecognizeTask]:
    cfg = smoke(junk_weight=junk_weight)
    task = RecognizeTask()
    task.setup(cfg, torch.device("cpu"))
    torch.manual_seed(0)
    model = task.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(steps):
        index = torch.randint(task.train_size, (64,), generator=g)
        out = task.step(model, task.train_batch(index, g))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    return model.eval(), task


def test_outlier_exposure_makes_the_output_on_unseen_junk_flatter():
    held_out = torch.cat([junk.make(f, 40, seed=9, purpose="measure", digits=digits()) for f in SYNTH_FAMILIES])
    x = held_out.unsqueeze(1).float() / 255
    models = [train_steps(w)[0] for w in (0.0, 1.0)]
    with torch.no_grad():
        plain, oe = (uniform_kl(m(x)).item() for m in models)
    assert oe < 0.5 * plain  # KL(uniform || p): 0 for a flat output


def test_without_junk_weight_the_batches_are_unchanged():
    task = RecognizeTask()
    task.setup(smoke(), torch.device("cpu"))  # junk_weight absent: off
    assert task.junk is None
    x, y = task.train_batch(torch.arange(8), torch.Generator())
    assert len(x) == len(y) == 8
    task.setup(smoke(junk_weight=0.5, junk_fraction=0.25), torch.device("cpu"))
    assert task._junk is None  # made at the first training batch: evaluating a run never makes it
    x, y = task.train_batch(torch.arange(8), torch.Generator())
    assert (len(x), len(y)) == (10, 8)  # 2 junk images follow the 8 digits


def test_bad_junk_families_are_a_clear_error():
    with pytest.raises(DigitlabError, match="doodles"):
        RecognizeTask().setup(smoke(junk_weight=1.0, junk_families=["doodles"]), torch.device("cpu"))


def test_bar_digit_puts_a_bar_as_tall_as_the_digit_beside_it():
    grey_square = torch.zeros(1, 28, 28, dtype=torch.uint8)
    grey_square[0, 9:19, 9:19] = 128  # the "digit": grey, so the white bar tells itself apart
    rng, sides = np.random.default_rng(0), set()
    for _ in range(20):
        out = junk._bar_digit(rng, grey_square)
        bar, digit = out > 0.75, (out > 0.25) & (out < 0.75)
        bar_cols, digit_cols = np.nonzero(bar.any(0))[0], np.nonzero(digit.any(0))[0]
        assert len(digit_cols) == 10 and 1 <= len(bar_cols) <= 8
        assert bar_cols.max() < digit_cols.min() or bar_cols.min() > digit_cols.max()  # beside it, not across
        sides.add(bar_cols.max() < digit_cols.min())
        assert np.ptp(np.nonzero(bar.any(1))[0]) + 1 == 10  # as tall as the digit
    assert sides == {True, False}


def test_junk_mix_sets_each_familys_share_of_the_training_junk():
    both = ("marks", "scribble")
    plain = junk.make_mix(200, 0, digits(), None, both)  # TRAIN_MIX: 0.2 and 0.2, half each
    only_marks = junk.make_mix(200, 0, digits(), None, both, {"scribble": 0.0})
    assert len(plain) == len(only_marks) == 200
    marks = junk.make("marks", 200, 0, "train")
    assert torch.equal(only_marks.sort(0).values, marks.sort(0).values)  # the same images, shuffled
    assert not torch.equal(plain.sort(0).values, marks.sort(0).values)


@pytest.mark.parametrize("mix", [{"doodles": 0.3}, {"marks": -1}, {"marks": "a lot"},
                                 {f: 0 for f in SYNTH_FAMILIES}, [0.3]])
def test_bad_junk_mix_is_a_clear_error(mix):
    with pytest.raises(DigitlabError, match="junk_mix"):
        RecognizeTask().setup(smoke(junk_weight=1.0, junk_mix=mix), torch.device("cpu"))


def test_every_run_stores_a_calibration_that_verdict_and_bench_use(tmp_path):
    run = loop.train(smoke(junk_weight=0.5), tmp_path / "run", quiet=True)
    meta = json.loads((run / "model.json").read_text())
    cal = meta["calibration"]
    assert cal["temperature"] > 0 and 0 < cal["not_a_digit_below"] <= 1 and 0 < cal["unsure_below"] <= 1
    assert cal["validation"]["not_a_digit"] <= 0.003 + 1e-9
    assert verdict.Calibration.from_meta(meta).temperature == cal["temperature"]
    sets = {f: junk.make(f, 30, 0, "measure", digits=synthetic.load_split("test")[0]) for f in SYNTH_FAMILIES}
    result = bench_junk.evaluate_run(run, sets)
    assert not result["calibrated_by_bench"]
    assert set(result["families"]) == set(SYNTH_FAMILIES)
    assert 0 <= result["families"]["scribble"]["auroc"] <= 1
    assert result["test_ece_after"] >= 0


def test_junk_batches_work_with_label_aware_augmentation():
    """Continental 7s and 1s read the labels: the junk that follows the digits has none (-1), so it is left alone."""
    cfg = config.apply_overrides(smoke(junk_weight=0.5, junk_fraction=0.5), {"augment": {"continental_p": 1.0}})
    task = RecognizeTask()
    task.setup(cfg, torch.device("cpu"))
    x, y = task.train_batch(torch.arange(16), torch.Generator().manual_seed(0))
    assert (len(x), len(y)) == (24, 16)


def test_the_calibration_reuses_the_last_validation_pass_only_for_the_same_weights(monkeypatch):
    cfg = smoke()
    task = RecognizeTask()
    task.setup(cfg, torch.device("cpu"))
    model = task.build_model(cfg)
    task.evaluate(model, "val")
    passes = []
    real = task.predict_logits
    monkeypatch.setattr(task, "predict_logits", lambda m, x: passes.append(len(x)) or real(m, x))
    reused = task.model_meta(model)["calibration"]
    assert passes == []  # the same weights: the last validation logits serve
    fresh = RecognizeTask()
    fresh.setup(cfg, torch.device("cpu"))
    assert fresh.model_meta(model)["calibration"] == reused  # computed from scratch: the same
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    changed = task.model_meta(model)["calibration"]
    assert passes == [cfg.val_size] and changed != reused  # other weights: validated again
