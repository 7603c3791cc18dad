"""The speed path of recognize-fast (docs/speed.md): digitnet_fast's shapes and cost, bf16 autocast on
the CPU (cpu_amp), and that a bf16 run trains and saves ordinary float32 weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.flop_counter import FlopCounterMode

from digitlab import config
from digitlab.cli import main
from digitlab.engine import device as devices
from digitlab.engine import loop
from digitlab.models import registry


def forward_flops(model: torch.nn.Module) -> int:
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.eval()(torch.zeros(1, 1, 28, 28))
    return counter.get_total_flops()


@pytest.mark.parametrize("stem_kernel", [2, 3, 4])
def test_digitnet_fast_halves_the_image_in_its_stem_and_classifies(stem_kernel):
    model = registry.create("digitnet_fast", stem_kernel=stem_kernel)
    stem = model.features[1]
    assert stem(torch.zeros(2, 1, 28, 28)).shape == (2, 16, 14, 14)
    assert model(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_digitnet_fast_costs_less_than_half_of_digitnet():
    fast, default = registry.create("digitnet_fast"), registry.create("digitnet", widths=(32, 64, 128))
    assert forward_flops(fast) < 0.5 * forward_flops(default)


def test_digitnet_fast_rejects_wrong_stage_counts():
    with pytest.raises(Exception, match="widths needs 3 numbers"):
        registry.create("digitnet_fast", widths=(16, 32))


@pytest.mark.parametrize("cpu_amp", [True, False])
def test_cpu_amp_means_bf16_autocast_only_where_the_cpu_has_it(cpu_amp, monkeypatch):
    cfg = config.resolve("recognize", "recognize-smoke", {"cpu_amp": cpu_amp})
    cpu = torch.device("cpu")
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    assert loop._amp_dtype(cfg, cpu) == (torch.bfloat16 if cpu_amp else None)
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)  # emulated bf16 would be slower: off
    assert loop._amp_dtype(cfg, cpu) is None


def test_a_bf16_run_trains_and_saves_float32_weights(tmp_path, monkeypatch):
    seen = []
    real_autocast = torch.autocast

    def recording_autocast(device_type, *args, **kwargs):  # the loop's autocast, as it is called
        seen.append((device_type, kwargs.get("dtype"), kwargs.get("enabled")))
        return real_autocast(device_type, *args, **kwargs)

    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)  # bf16 also runs (slowly) where emulated
    monkeypatch.setattr(torch, "autocast", recording_autocast)
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--model", "digitnet_fast", "--out", str(run),
                 "--quiet", "--set", "cpu_amp=true", "figures=false", "tensorboard=false"]) == 0
    assert ("cpu", torch.bfloat16, True) in seen
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.5  # chance is 0.1
    assert {t.dtype for t in load_file(run / "model.safetensors").values() if t.is_floating_point()} == {torch.float32}


def test_recognize_fast_is_the_fast_model_in_bf16():
    cfg = config.resolve("recognize", None, {})
    assert cfg.model == "digitnet_fast" and cfg.cpu_amp and cfg.epochs == 1
