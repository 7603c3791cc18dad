"""The Python API: digitlab.load / digitlab.train, every accepted kind of image, typed results."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

import digitlab
from digitlab.errors import DigitlabError
from helpers import untrained_run


def make_run(root, task: str, model: str, model_args: dict):
    return untrained_run(root / task, task, model, model_args, metrics={"test_acc": 0.5})


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    return {"recognize": make_run(root, "recognize", "digitnet", {"widths": [4, 8, 8]}),
            "denoise": make_run(root, "denoise", "denoiser", {"widths": [8, 16], "bottleneck": 16}),
            "compare": make_run(root, "compare", "siamese_r5", {})}


def drawn_one(size: int = 120) -> Image.Image:
    img = Image.new("L", (size, size), 255)
    ImageDraw.Draw(img).line([(size // 2, size // 6), (size // 2, 5 * size // 6)], fill=0, width=size // 12)
    return img


def test_load_picks_the_class_from_the_run_and_prints_well(folders):
    for task, cls in (("recognize", digitlab.Recognizer), ("denoise", digitlab.Denoiser),
                      ("compare", digitlab.Comparer)):
        model = digitlab.load(folders[task])
        assert type(model) is cls and model.meta["task"] == task
        assert str(folders[task]) in repr(model) and not model.shipped


def test_every_kind_of_image_gives_the_same_answer(folders, tmp_path):
    rec = digitlab.load(folders["recognize"])
    pil = drawn_one()
    pil.save(tmp_path / "one.png")
    gray = np.asarray(pil)                                     # uint8, dark on light, 120x120
    answers = [rec.predict(tmp_path / "one.png"), rec.predict(str(tmp_path / "one.png")), rec.predict(pil),
               rec.predict(gray), rec.predict(torch.from_numpy(gray.astype(np.float32) / 255))]
    assert all(isinstance(a, digitlab.Reading) for a in answers)
    for a in answers[1:]:
        assert a.digit == answers[0].digit
        assert np.allclose(a.probabilities, answers[0].probabilities, atol=1e-5)


def test_batches_give_lists_in_order(folders):
    rec = digitlab.load(folders["recognize"])
    x = torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    batch = rec.predict(x, normalize=False)
    assert isinstance(batch, list) and len(batch) == 5
    one_by_one = [rec.predict(x[i, 0], normalize=False) for i in range(5)]
    assert [r.digit for r in batch] == [r.digit for r in one_by_one]
    assert len(rec.predict([x[0, 0], x[1, 0]], normalize=False)) == 2


def test_reading_carries_the_verdict(folders):
    r = digitlab.load(folders["recognize"]).predict(drawn_one())
    assert r.abstain in (None, "unsure", "not_a_digit")
    assert r.runner_up != r.digit and r.runner_up_probability <= r.probability
    assert sum(r.probabilities) == pytest.approx(1.0, abs=1e-6)
    assert r.message in str(r)


def test_denoise_and_compare_results(folders):
    noisy = np.random.default_rng(0).random((28, 28)).astype(np.float32)
    d = digitlab.load(folders["denoise"]).denoise(noisy)
    assert isinstance(d, digitlab.Denoised) and d.image.shape == (28, 28)
    assert 0 <= d.image.min() and d.image.max() <= 1
    assert d.kind in d.probabilities and sum(d.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    s = digitlab.load(folders["compare"]).same(drawn_one(), drawn_one())
    assert isinstance(s, digitlab.Same) and 0 <= s.probability <= 1 and s.cosine == pytest.approx(1.0, abs=1e-5)
    assert s.same == (s.probability >= 0.5)


@pytest.mark.parametrize("bad, words", [
    ("no-such-thing", "neither a task nor a run folder"),
    (np.zeros((2, 3, 4, 5)), "one channel each"),
    (np.zeros((3, 4, 5, 6, 7)), "one channel each"),
    (np.zeros((1, 2, 3, 4)), "2-D grid"),
    (np.full((28, 28), np.nan), "finite"),
    ([], "no images"),
])
def test_bad_input_is_one_clear_error(folders, bad, words):
    with pytest.raises(DigitlabError, match=words):
        if isinstance(bad, str):
            digitlab.load(bad)
        else:
            digitlab.load(folders["recognize"]).predict(bad)


def test_a_run_of_another_task_is_refused(folders):
    with pytest.raises(DigitlabError, match="not a 'recognize' run"):
        digitlab.Recognizer(folders["denoise"])


def test_train_returns_a_run_that_loads(tmp_path):
    run = digitlab.train("recognize", preset="recognize-smoke", out=tmp_path / "run", epochs=1,
                         figures=False, tensorboard=False)
    assert run.path == tmp_path / "run" and 0 <= run.metrics["test_acc"] <= 1
    assert run.config["epochs"] == 1 and "test_acc" in repr(run)
    assert isinstance(run.load(), digitlab.Recognizer)
    with pytest.raises(DigitlabError, match="not empty"):
        digitlab.train("recognize", preset="recognize-smoke", out=tmp_path / "run")
