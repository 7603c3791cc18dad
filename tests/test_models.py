"""Every recognition model: shapes, gradients reach every parameter, the reports' layer sizes."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torchmetrics.classification import MulticlassConfusionMatrix

from digitlab.errors import DigitlabError
from digitlab.models import registry
from digitlab.models.layers import ACTIVATIONS
from digitlab.tasks.recognize import classification_metrics, confusion_matrix


@pytest.mark.parametrize("name", registry.list_models("recognize"))
def test_forward_backward_reaches_every_parameter(name):
    args = {"resnet_r4": {"widths": (16, 32, 64)},
            "ensemble": {"members": [{"model": "digitnet", "model_args": {"widths": [4, 8, 8]}}] * 2}}
    model = registry.create(name, **args.get(name, {}))
    x = torch.rand(4, 1, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 10)
    logits.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_r3_cnn_is_exactly_the_reported_network():
    model = registry.create("cnn_r3")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels, c.kernel_size) for c in convs] == [(1, 10, (5, 5)), (10, 20, (5, 5))]
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linear] == [(320, 10)]
    assert registry.count_params(model) == 260 + 5020 + 3210


def test_r2_resnet_stem_and_blocks():
    model = registry.create("resnet_r2")
    stem = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert stem.kernel_size == (7, 7) and stem.stride == (2, 2) and stem.out_channels == 64
    projections = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 2  # the two downsampling blocks
    dense = [(l.in_features, l.out_features) for l in model.modules() if isinstance(l, nn.Linear)]
    assert dense == [(64, 64), (64, 10)]


def test_r4_resnet_stage_widths_and_shortcut_dropout():
    model = registry.create("resnet_r4")
    widths = sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)})
    assert widths == [32, 128, 256, 512]
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    assert drops == [0.1, 0.1, 0.1]  # one per projection shortcut (stage entries)


@pytest.mark.parametrize("activation", list(ACTIVATIONS))
def test_activation_is_selectable(activation):
    model = registry.create("digitnet", widths=(8, 16, 32), activation=activation)
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_and_bad_args_are_clear_errors():
    with pytest.raises(DigitlabError, match="unknown model"):
        registry.create("lenet9000")
    with pytest.raises(DigitlabError, match="bad arguments"):
        registry.create("cnn_r3", depth=3)
    with pytest.raises(DigitlabError, match="unknown activation"):
        registry.create("cnn_r3", activation="softsign")


def test_confusion_matrix_and_accuracy_match_torchmetrics():
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 10, (500,), generator=g)
    preds = torch.where(torch.rand(500, generator=g) < 0.7, labels, torch.randint(0, 10, (500,), generator=g))
    expected = MulticlassConfusionMatrix(num_classes=10)(preds, labels)
    assert torch.equal(confusion_matrix(preds, labels), expected)
    probs = torch.nn.functional.one_hot(preds, 10).float() * 0.9 + 0.01
    m = classification_metrics(probs, preds, labels)
    assert m["acc"] == pytest.approx((preds == labels).float().mean().item())
    per_class = expected.diag().float() / expected.sum(1).float()
    assert m["per_class_acc"] == pytest.approx(per_class.tolist())
