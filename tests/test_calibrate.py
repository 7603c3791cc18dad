"""Calibration on synthetic logits: temperature recovered, ECE right at both ends, thresholds honest."""

from __future__ import annotations

import pytest
import torch

from digitlab import calibrate, verdict
from digitlab.errors import DigitlabError


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits z and labels drawn from softmax(z / temperature): the true temperature is known."""
    g = torch.Generator().manual_seed(seed)
    z = 4 * torch.randn(n, 10, generator=g, dtype=torch.float64)
    labels = torch.multinomial((z / temperature).softmax(1), 1, generator=g).squeeze(1)
    return z, labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_temperature_recovers_a_known_temperature(true_t):
    z, labels = sampled(20_000, true_t)
    assert calibrate.fit_temperature(z, labels) == pytest.approx(true_t, rel=0.05)


def test_ece_is_zero_when_confidence_matches_accuracy_exactly():
    # every row says 0.8 for its top class, and exactly 80% of the rows are right
    probs = torch.full((1000, 10), 0.2 / 9, dtype=torch.float64)
    probs[:, 3] = 0.8
    labels = torch.full((1000,), 3)
    labels[:200] = 5
    assert calibrate.ece(probs, labels) == pytest.approx(0.0, abs=1e-4)  # torchmetrics bins in float32


@pytest.mark.parametrize("temperature", [0.3, 1.0, 4.0])
def test_ece_agrees_with_torchmetrics(temperature):
    # ece is written out (importing torchmetrics is slow); it must bin exactly as torchmetrics does,
    # including a confidence of exactly 1.0 (a bin of its own there)
    tm = pytest.importorskip("torchmetrics.functional.classification")
    z, labels = sampled(5_000, 1.0, seed=1)
    probs = (z / temperature).softmax(1)
    probs[0] = 0.0
    probs[0, 4] = 1.0
    want = float(tm.multiclass_calibration_error(probs, labels, num_classes=10, n_bins=15, norm="l1"))
    assert calibrate.ece(probs, labels) == pytest.approx(want, abs=1e-5)  # torchmetrics sums in float32


def test_ece_small_for_sampled_labels_and_large_for_overconfidence():
    z, labels = sampled(20_000, 2.0)
    assert calibrate.ece((z / 2.0).softmax(1), labels) < 0.02   # labels really drawn from these probabilities
    assert calibrate.ece((z / 0.5).softmax(1), labels) > 0.15   # 4x too sharp


def test_thresholds_reject_at_most_the_asked_fractions():
    z, labels = sampled(5000, 1.0)
    probs = z.softmax(1)
    cal = {"temperature": 1.0, **calibrate.choose_thresholds(probs, reject_fraction=0.003, unsure_fraction=0.01)}
    rates = calibrate.abstain_rates(probs, cal)
    assert rates["not_a_digit"] <= 0.003 and rates["not_a_digit"] > 0.002   # at most, and not far below
    assert rates["not_a_digit"] + rates["unsure"] <= 0.003 + 0.01


def test_fit_gives_what_verdict_reads_and_verdict_agrees_with_the_rates():
    z, labels = sampled(4000, 2.0)
    cal = calibrate.fit(z, labels)
    assert cal["temperature"] == pytest.approx(2.0, rel=0.1)
    assert cal["validation"]["ece_after"] < cal["validation"]["ece_before"]
    readings = verdict.read(z.numpy(), verdict.Calibration.from_meta({"calibration": cal}))
    share = sum(r.abstain == "not_a_digit" for r in readings) / len(readings)
    assert share == pytest.approx(cal["validation"]["not_a_digit"])


def test_auroc_orders_digits_above_junk():
    digits, junk = torch.linspace(0.6, 1.0, 50), torch.linspace(0.1, 0.5, 50)
    assert calibrate.auroc(digits, junk) == 1.0
    assert calibrate.auroc(junk, digits) == 0.0
    same = torch.rand(4000, generator=torch.Generator().manual_seed(1))
    assert calibrate.auroc(same[:2000], same[2000:]) == pytest.approx(0.5, abs=0.05)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(DigitlabError, match="logits"):
        calibrate.fit(torch.zeros(5, 10), torch.zeros(4, dtype=torch.long))
    with pytest.raises(DigitlabError, match="reject_fraction"):
        calibrate.choose_thresholds(torch.full((5, 10), 0.1), reject_fraction=0.7)
