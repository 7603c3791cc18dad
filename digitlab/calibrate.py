"""Calibration of a recogniser, fitted on the validation split: how far to trust its probabilities.

Temperature scaling (Guo et al. 2017): one scalar T, logits / T, chosen to minimise the negative
log-likelihood on validation. It changes no prediction, only how confident they are. Then two
abstain thresholds for `digitlab.verdict.read`, chosen on the same validation digits:

    not_a_digit_below  top-two probability mass under this -> "not a digit". Set at the
                       `reject_fraction` quantile of validation digits (default 0.3%), so almost no
                       real digit is turned away; junk trained with outlier exposure sits far lower.
    unsure_below       top probability under this -> "not sure: a or b?". Set at the
                       `unsure_fraction` quantile (default 1%): the least confident 1% of digits is
                       where most errors are (the model is ~99% accurate), so this flags a large
                       part of the errors while asking about only 1 digit in 100.

`fit(val_logits, val_labels)` returns the dict a model.json stores under "calibration".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from digitlab.errors import DigitlabError

REJECT_FRACTION = 0.003
UNSURE_FRACTION = 0.01


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, max_iter: int = 100) -> float:
    """The T > 0 minimising mean NLL of softmax(logits / T). Optimised as log T (stays positive)
    with torch's LBFGS: one smooth convex-in-practice scalar problem, a handful of iterations."""
    logits, labels = _check(logits, labels)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp())


def ece(probs: torch.Tensor, labels: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error of the top-label confidence, `bins` equal-width bins (L1): the sum
    over bins of bin weight x |accuracy - mean confidence|, binned as torchmetrics'
    MulticlassCalibrationError does (a test checks they agree). Written out here because importing
    torchmetrics costs about a second on every training run (docs/speed.md)."""
    probs, labels = torch.as_tensor(probs).double(), torch.as_tensor(labels).long()
    confidence, predicted = probs.max(1)
    edges = torch.linspace(0, 1, bins + 1, dtype=confidence.dtype)
    which = torch.bucketize(confidence, edges, right=True) - 1  # confidence 1.0 gets a bin of its own
    hits = torch.bincount(which, weights=(predicted == labels).double(), minlength=bins + 1)
    confidences = torch.bincount(which, weights=confidence, minlength=bins + 1)
    return float((hits - confidences).abs().sum() / len(labels))


def auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """Area under the ROC curve of a score that should be higher for `positive` (digits) than for
    `negative` (junk): the probability that a random digit outscores a random junk image."""
    from torchmetrics.functional.classification import binary_auroc

    scores = torch.cat([torch.as_tensor(positive), torch.as_tensor(negative)]).double()
    target = torch.cat([torch.ones(len(positive)), torch.zeros(len(negative))]).long()
    return float(binary_auroc(scores, target))


def top_two(probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(top probability, top-two probability mass) per row: the scores verdict.read thresholds."""
    values = torch.as_tensor(probs).topk(2, dim=1).values
    return values[:, 0], values.sum(1)


def choose_thresholds(probs: torch.Tensor, reject_fraction: float = REJECT_FRACTION,
                      unsure_fraction: float = UNSURE_FRACTION) -> dict:
    """{"not_a_digit_below", "unsure_below"} from calibrated validation probabilities of digits."""
    for name, value in (("reject_fraction", reject_fraction), ("unsure_fraction", unsure_fraction)):
        if not 0 <= value < 0.5:
            raise DigitlabError(f"{name} {value} must be in [0, 0.5)", f"set {name} to e.g. 0.003 or 0.01")
    top, mass = top_two(probs)
    return {"not_a_digit_below": _quantile_below(mass, reject_fraction),
            "unsure_below": _quantile_below(top, unsure_fraction)}


def _quantile_below(scores: torch.Tensor, fraction: float) -> float:
    """A threshold with exactly k = floor(fraction * n) of `scores` below it: midway between the
    k-th and (k+1)-th smallest, so the rounding of another softmax (verdict's numpy one) cannot
    move a score across it."""
    k = int(fraction * len(scores))
    s = scores.double().sort().values
    return float((s[k - 1] + s[k]) / 2) if k > 0 else float(s[0] / 2)


def abstain_rates(probs: torch.Tensor, calibration: dict) -> dict:
    """Fractions answered "not_a_digit" and "unsure" under `calibration` (same rule as verdict.read)."""
    top, mass = top_two(probs)
    not_digit = mass < calibration["not_a_digit_below"]
    unsure = ~not_digit & (top < calibration["unsure_below"])
    return {"not_a_digit": float(not_digit.double().mean()), "unsure": float(unsure.double().mean()),
            "accepted": ~(not_digit | unsure)}


def fit(logits: torch.Tensor, labels: torch.Tensor, reject_fraction: float = REJECT_FRACTION,
        unsure_fraction: float = UNSURE_FRACTION) -> dict:
    """Everything model.json keeps under "calibration", with the validation figures behind it."""
    logits, labels = _check(logits, labels)
    t = fit_temperature(logits, labels)
    probs = (logits / t).softmax(1)
    cal = {"temperature": t, **choose_thresholds(probs, reject_fraction, unsure_fraction)}
    rates = abstain_rates(probs, cal)
    wrong = probs.argmax(1) != labels
    cal["validation"] = {
        "n": len(labels), "ece_before": ece(logits.softmax(1), labels), "ece_after": ece(probs, labels),
        "not_a_digit": rates["not_a_digit"], "unsure": rates["unsure"],
        # share of the validation errors that an abstain catches: why the unsure threshold is worth it
        "errors_flagged": float((~rates["accepted"] & wrong).sum() / wrong.sum().clamp(min=1)),
    }
    return cal


def _check(logits, labels) -> tuple[torch.Tensor, torch.Tensor]:
    logits, labels = torch.as_tensor(logits).double(), torch.as_tensor(labels).long()
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or len(labels) == 0:
        raise DigitlabError(f"calibration needs logits (N, K) and labels (N,), got {tuple(logits.shape)} "
                            f"and {tuple(labels.shape)}", "pass one row of logits per labelled image")
    return logits, labels
