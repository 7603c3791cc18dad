"""From a recogniser's logits to an answer a person can rely on: calibrated probabilities, the
runner-up, and an abstain reason ("not sure: 1 or 7?", "not a digit").

A model's `model.json` may hold `"calibration": {"temperature", "unsure_below", "not_a_digit_below"}`,
fitted on the validation split (see `digitlab.calibrate`); without it the defaults below apply.
Only numpy here: the server, the CLI and the Python API all call `read` on the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Defaults for a model without a fitted calibration (temperature 1).
UNSURE_BELOW = 0.6        # top probability under this: "not sure: a or b?"
NOT_A_DIGIT_BELOW = 0.5   # top-two probability mass under this: the evidence fits no digit


@dataclass(frozen=True)
class Calibration:
    temperature: float = 1.0
    unsure_below: float = UNSURE_BELOW
    not_a_digit_below: float = NOT_A_DIGIT_BELOW

    @classmethod
    def from_meta(cls, meta: dict | None) -> "Calibration":
        values = (meta or {}).get("calibration") or {}
        return cls(**{k: float(v) for k, v in values.items() if k in cls.__dataclass_fields__})

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(B,10) logits -> (B,10) calibrated probabilities (softmax of logits / temperature)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Reading:
    """One image's answer. `digit` is always the most probable digit; `abstain` says whether to trust it."""

    digit: int
    probability: float
    runner_up: int
    runner_up_probability: float
    probabilities: tuple[float, ...]
    abstain: str | None = None   # None, "unsure" or "not_a_digit"

    @property
    def message(self) -> str:
        if self.abstain == "not_a_digit":
            return "not a digit"
        if self.abstain == "unsure":
            return f"not sure: {self.digit} or {self.runner_up}?"
        return str(self.digit)

    def to_dict(self) -> dict:
        return {"digit": self.digit, "probability": self.probability, "abstain": self.abstain,
                "message": self.message,
                "runner_up": {"digit": self.runner_up, "probability": self.runner_up_probability},
                "probabilities": list(self.probabilities)}

    def __str__(self) -> str:
        if self.abstain is None:
            return f"{self.digit} (p={self.probability:.3f})"
        return f"{self.message} (p={self.probability:.3f}, runner-up {self.runner_up} p={self.runner_up_probability:.3f})"


def read(logits: np.ndarray, calibration: Calibration | None = None) -> list[Reading]:
    """(B,10) logits -> one Reading per image."""
    cal = calibration or Calibration()
    probs = cal.probabilities(logits)
    order = np.argsort(-probs, axis=1)
    out = []
    for p, (first, second) in zip(probs, order[:, :2]):
        top, runner = float(p[first]), float(p[second])
        if top + runner < cal.not_a_digit_below:
            abstain = "not_a_digit"
        elif top < cal.unsure_below:
            abstain = "unsure"
        else:
            abstain = None
        out.append(Reading(int(first), top, int(second), runner, tuple(float(v) for v in p), abstain))
    return out
