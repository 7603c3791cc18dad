"""The abstain rule: confident, unsure between two digits, or not a digit at all."""

import numpy as np
import pytest

from digitlab import verdict


def logits_for(probs):
    return np.log(np.asarray(probs, dtype=np.float64))[None]


def test_confident_answer_is_the_digit():
    r = verdict.read(logits_for([0.01] * 7 + [0.91, 0.01, 0.01]))[0]
    assert (r.digit, r.abstain, r.message) == (7, None, "7")
    assert r.probability == pytest.approx(0.91)


def test_two_competing_digits_are_unsure_and_name_both():
    r = verdict.read(logits_for([0.005, 0.48, 0.005, 0.005, 0.005, 0.005, 0.005, 0.44, 0.025, 0.025]))[0]
    assert r.abstain == "unsure" and r.message == "not sure: 1 or 7?"
    assert (r.runner_up, round(r.runner_up_probability, 2)) == (7, 0.44)


def test_spread_evidence_is_not_a_digit():
    r = verdict.read(logits_for([0.1] * 10))[0]
    assert r.abstain == "not_a_digit" and r.message == "not a digit"


def test_temperature_flattens_probabilities():
    logits = logits_for([0.02] * 9 + [0.82])
    sharp = verdict.read(logits)[0]
    flat = verdict.read(logits, verdict.Calibration(temperature=3.0))[0]
    assert flat.probability < sharp.probability
    assert sum(flat.probabilities) == pytest.approx(1.0)


def test_calibration_is_read_from_model_meta_and_ignores_other_keys():
    cal = verdict.Calibration.from_meta({"calibration": {"temperature": 1.5, "unsure_below": 0.7, "fitted_on": "val"}})
    assert cal == verdict.Calibration(1.5, 0.7, verdict.NOT_A_DIGIT_BELOW)
    assert verdict.Calibration.from_meta({}) == verdict.Calibration()
