"""Real-handwriting shifts (digitlab.data.shift) and `digitlab bench shift`, on small synthetic data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from digitlab import config
from digitlab.bench.shift import expected_calibration_error
from digitlab.cli import main
from digitlab.data import shift, synthetic
from digitlab.errors import DigitlabError
from digitlab.tasks.recognize import RecognizeTask


@pytest.fixture(scope="module")
def digits():
    x, y = synthetic.load_split("test")
    return x[:40].numpy().astype(np.float32) / 255, y[:40].numpy()


def _identity(digits, classes=None):
    """The digits through preprocessing only (what every shift is compared with)."""
    return shift.apply(shift.Shift("none", "", lambda x, y, rng: list(x), classes), *digits)[0]


def _apply(name, digits, seed=0):
    return shift.apply(shift.get(name), *digits, seed=seed)


@pytest.mark.parametrize("name", list(shift.BY_NAME))
def test_each_shift_keeps_shape_range_and_is_deterministic(name, digits):
    out, labels, blank = _apply(name, digits)
    assert out.dtype == np.float32 and out.shape == (len(labels), 28, 28)
    assert out.min() >= 0 and out.max() <= 1 and blank == 0
    again, _, _ = _apply(name, digits)
    np.testing.assert_array_equal(out, again)
    if name not in ("invert", "translate"):  # the two that preprocessing undoes (tested below)
        assert np.abs(out - _identity(digits, shift.get(name).classes)).mean() > 0.01


def test_randomised_shifts_depend_on_the_seed(digits):
    for name in ("rotate", "broken", "zigzag", "scan"):
        assert not np.array_equal(_apply(name, digits, seed=0)[0], _apply(name, digits, seed=1)[0]), name


def _ink(images):
    return float((images > 0.5).mean())


def test_stroke_width_shifts_do_what_their_names_say(digits):
    assert _ink(_apply("thick", digits)[0]) > _ink(_identity(digits)) > _ink(_apply("thin", digits)[0])
    assert _ink(_apply("pen", digits)[0]) > _ink(_apply("pen_thin", digits)[0])


def test_pen_strokes_have_constant_width_and_binary_is_binary(digits):
    raw = shift.get("binary").fn(*digits, np.random.default_rng(0))  # before preprocessing resizes it
    assert set(np.unique(np.stack(raw))) == {0.0, 1.0}
    # a pen stroke is solid: once re-rendered, the ink is saturated, unlike MNIST's grey profile
    pen = _apply("pen", digits)[0]
    assert (pen > 0.95).sum() / (pen > 0.05).sum() > (digits[0] > 0.95).sum() / (digits[0] > 0.05).sum()


def test_preprocessing_undoes_inversion_and_translation(digits):
    base = _identity(digits)
    assert np.abs(_apply("invert", digits)[0] - base).mean() < 0.01
    # sub-pixel shifts resample (blur) the strokes a little; a real change, e.g. rotation, differs far more
    moved = np.abs(_apply("translate", digits)[0] - base).mean()
    assert moved < 0.05 and moved < np.abs(_apply("rotate", digits)[0] - base).mean() / 2


def test_lowres_and_blur_lose_detail(digits):
    base = _identity(digits)
    def edges(a):  # mean absolute horizontal gradient: sharp strokes have more
        return float(np.abs(np.diff(a, axis=2)).mean())
    assert edges(_apply("lowres8", digits)[0]) < edges(_apply("lowres16", digits)[0]) < edges(base)
    assert edges(_apply("blur", digits)[0]) < edges(base)


def test_geometric_shifts_turn_and_stretch_the_ink(digits):
    def aspect(a):  # width / height of the ink box, averaged
        out = []
        for img in a:
            r, c = np.nonzero(img > 0.3)
            out.append((np.ptp(c) + 1) / (np.ptp(r) + 1))
        return float(np.mean(out))
    base = _identity(digits)
    assert aspect(_apply("stretch", digits)[0]) > aspect(base) > aspect(_apply("squeeze", digits)[0])


def test_fill_and_bitmap32_hand_over_digits_as_size_normalised_collections_do(digits):
    for img in shift.get("fill").fn(*digits, np.random.default_rng(0)):  # before preprocessing
        assert img.shape == (16, 16)
        assert img[0].any() and img[-1].any() and img[:, 0].any() and img[:, -1].any()  # ink on all four sides
    for img in shift.get("bitmap32").fn(*digits, np.random.default_rng(0)):
        assert img.shape == (32, 32) and set(np.unique(img)) <= {0.0, 1.0}
        assert img[0].any() and img[-1].any()  # the height fills the field


def test_continental_only_keeps_ones_and_sevens_and_adds_ink(digits):
    out, labels, _ = _apply("continental", digits)
    assert set(labels) == {1, 7} and len(labels) == np.isin(digits[1], (1, 7)).sum()
    raw = _identity(digits, (1, 7))
    assert out.sum() > raw.sum()


def test_bad_shift_input_gives_one_clear_error():
    from digitlab.errors import DigitlabError

    with pytest.raises(DigitlabError, match="unknown shift 'smudge'"):
        shift.get("smudge")
    with pytest.raises(DigitlabError, match=r"shape \(N, 28, 28\)"):
        shift.apply(shift.get("thin"), np.zeros((2, 32, 32)), np.zeros(2))


def test_ece_is_zero_when_confidence_matches_accuracy_and_large_when_overconfident():
    labels = np.array([0, 0, 0, 0])
    calibrated = np.tile([0.75, 0.25], (4, 1))[:, [0, 1]]  # 75% sure, 3 of 4 right
    calibrated = np.pad(calibrated, ((0, 0), (0, 8)))
    assert expected_calibration_error(calibrated, np.array([0, 0, 0, 1])) == pytest.approx(0.0)
    overconfident = np.pad(np.tile([0.01, 0.99], (4, 1)), ((0, 0), (0, 8)))
    assert expected_calibration_error(overconfident, labels) == pytest.approx(0.99)


def test_bench_shift_scores_each_shift_and_writes_json(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--set", "epochs=1", "figures=false",
                 "tensorboard=false", "--out", str(run), "--quiet"]) == 0
    out = tmp_path / "shift.json"
    assert main(["bench", "shift", str(run), str(run), "--split", "val", "--limit", "30",
                 "--shifts", "thin", "invert", "continental", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["split"] == "val" and record["limit"] == 30 and record["images"] == 30
    first, second = record["runs"]
    assert first == second | {"run": first["run"]}  # same run, same figures: deterministic
    assert set(first["shifts"]) == {"thin", "invert", "continental"}
    assert first["shifts"]["continental"]["n"] < 30 and first["shifts"]["thin"]["n"] == 30
    accs = [v["acc"] for v in first["shifts"].values()]
    assert first["mean_acc"] == pytest.approx(np.mean(accs)) and first["worst_acc"] == min(accs)
    assert 0 <= first["shifts"]["thin"]["ece"] <= 1 and record["environment"]["threads"] >= 1


def test_bench_shift_rejects_a_bad_limit(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--set", "epochs=1", "figures=false",
                 "tensorboard=false", "--out", str(run), "--quiet"]) == 0
    assert main(["bench", "shift", str(run), "--limit", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--limit must be a positive number" in capsys.readouterr().err


# --- shift.mix and the recognize task's shift_replay -------------------------------------------

def _only(*names, **weights):
    return {**{s.name: 0 for s in shift.SHIFTS if s.name not in names}, **weights}


def test_mix_sends_each_digit_through_one_shift_in_order(digits):
    x, y = digits
    np.testing.assert_array_equal(shift.mix(x, y, seed=3, weights=_only("lowres8")), _apply("lowres8", digits, seed=3)[0])
    both = shift.mix(x, y, seed=3, weights=_only("lowres8", "thick"))
    low, thick = _apply("lowres8", digits, seed=3)[0], _apply("thick", digits, seed=3)[0]
    is_low = (both == low).all((1, 2))
    assert ((both == thick).all((1, 2)) | is_low).all() and 0 < is_low.sum() < len(y)  # each image one of the two
    np.testing.assert_array_equal(both, shift.mix(x, y, seed=3, weights=_only("lowres8", "thick")))
    heavy = shift.mix(x, y, seed=3, weights=_only("lowres8", "thick", lowres8=20))
    assert (heavy == low).all((1, 2)).sum() > is_low.sum()  # a weight draws its shift more often


def test_mix_gives_a_shift_for_some_digits_only_those_digits(digits):
    x, y = digits
    out = shift.mix(x, y, seed=0, weights=_only("continental", "thin"))
    thin = _apply("thin", digits)[0]
    others = ~np.isin(y, (1, 7))
    assert others.any() and (out[others] == thin[others]).all()
    with pytest.raises(DigitlabError, match="continental"):
        shift.mix(x, y, seed=0, weights=_only("continental"))


def test_mix_weights_that_are_no_finite_share_are_a_clear_error():
    for weights in ({"zigzag": float("inf")}, {"zigzag": "4"}, {"nope": 1}):
        with pytest.raises(DigitlabError, match="zigzag|nope"):
            shift.mix_weights(weights)


def test_mix_keeps_a_digit_that_its_shift_blanks_clean(digits, monkeypatch):
    erase = shift.Shift("erase", "", lambda x, y, rng: [0 * i for i in x])
    monkeypatch.setattr(shift, "SHIFTS", (erase,))
    monkeypatch.setitem(shift.BY_NAME, "erase", erase)
    x, y = digits
    np.testing.assert_array_equal(shift.mix(x, y, seed=0), x)


def _replay_task(share, weights=None):
    task = RecognizeTask()
    task.setup(config.resolve("recognize", "recognize-smoke", {
        "progress": False, "figures": False, "tensorboard": False,
        "task_args": {"shift_replay": share, "shift_replay_weights": weights or {}}}), torch.device("cpu"))
    return task


def test_shift_replay_puts_that_share_of_shifted_training_digits_in_each_batch():
    index = torch.arange(200)
    assert _replay_task(0.0).replay is None
    plain = _replay_task(0.0).train_batch(index, torch.Generator().manual_seed(0))[0]
    task = _replay_task(0.3, _only("lowres8"))
    assert task._replay is None  # made at the first training batch: evaluating a run never makes it
    x, y = task.train_batch(index, torch.Generator().manual_seed(0))
    images, labels = task.splits["train"]
    lowres = _apply("lowres8", (images[index].numpy() / 255.0, labels[index].numpy()), seed=task.cfg.seed)[0]
    replayed = (x[:, 0] - torch.from_numpy(lowres)).abs().amax((1, 2)) < 1 / 255  # uint8 storage
    assert torch.equal(y, labels[index]) and 40 <= int(replayed.sum()) <= 80  # ~30% of 200
    assert torch.equal(x[~replayed], plain[~replayed])  # the others are the usual batch


@pytest.mark.parametrize("share, weights, match", [(1.5, {}, "shift_replay 1.5"),
                                                   (0.2, {"nope": 1}, "shift_replay_weights.*nope"),
                                                   (0.2, {"zigzag": -1}, "shift_replay_weights.*zigzag=-1")])
def test_bad_shift_replay_is_a_clear_error(share, weights, match):
    with pytest.raises(DigitlabError, match=match):
        _replay_task(share, weights)


def test_shift_replay_without_the_baselines_extra_names_it(monkeypatch):
    from digitlab import extras

    monkeypatch.setattr(extras, "missing", lambda extra: "scikit-image" if extra == "baselines" else None)
    with pytest.raises(DigitlabError, match="baselines"):
        _replay_task(0.2)
    assert _replay_task(0.0).replay is None  # without replay the extra is not needed
