"""Per-layer gradient norms recorded by parameter hooks (digitlab/engine/grad_norms.py)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from digitlab.engine.grad_norms import GradNorms, layer_name


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.down = nn.ModuleList([nn.Linear(2, 2, bias=False), nn.Linear(2, 1)])
        self.out = nn.Sequential(nn.Linear(1, 1, bias=False))


def test_layers_are_top_level_children_or_module_list_entries():
    net = Net()
    assert layer_name(net, "down.1.bias") == "down.1"
    assert layer_name(net, "out.0.weight") == "out"
    assert GradNorms(net).layers == ["down.0", "down.1", "out"]


def test_epoch_value_is_the_rms_over_steps_of_the_layer_norm():
    layer = nn.Linear(3, 1, bias=True)
    monitor = GradNorms(nn.Sequential(layer))
    xs = [torch.tensor([[3.0, 0.0, 4.0]]), torch.tensor([[0.0, 0.0, 0.0]])]
    for x in xs:  # loss = w.x + b: grad w = x, grad b = 1 -> squared norms 25 + 1, then 0 + 1
        layer.zero_grad()
        layer(x).sum().backward()
    assert monitor.end_epoch() == {"0": pytest.approx(math.sqrt((26 + 1) / 2))}
    layer(xs[0]).sum().backward()  # the next epoch starts from zero
    assert monitor.end_epoch()["0"] == pytest.approx(math.sqrt(26))
    assert len(monitor.to_json()["epochs"]) == 2


def test_an_epoch_without_steps_records_nothing_and_inference_adds_nothing():
    net = Net()
    monitor = GradNorms(net)
    with torch.no_grad():
        net.out(net.down[1](net.down[0](torch.ones(1, 2))))
    assert monitor.end_epoch() == {}
