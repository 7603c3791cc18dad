"""`digitlab bench inference`: latency and images/s per batch size, for PyTorch and ONNX Runtime."""

from __future__ import annotations

import json

import pytest

import torch

from digitlab import io as dio
from digitlab.cli import main
from digitlab.config import resolve
from digitlab.engine import run as runs
from digitlab.models import registry

pytest.importorskip("onnxruntime")


def make_run(root):
    cfg = resolve("recognize", None, {"model": "digitnet", "model_args": {"widths": [4, 8, 8]}})
    run = root / "r"
    run.mkdir()
    torch.manual_seed(0)
    dio.write_json(run / "config.json", cfg.to_dict())
    runs.save_model(run, registry.create(cfg.model, **cfg.model_kwargs()).eval(), cfg)
    return run


def test_inference_bench_times_each_runtime_and_batch(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.setenv("DIGITLAB_DATA", str(mnist_dir))  # the ONNX export checks itself on test images
    run, out = make_run(tmp_path), tmp_path / "inference.json"
    assert main(["bench", "inference", str(run), "--batches", "1", "16", "--seconds", "0.05",
                 "--threads", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    assert record["threads"] == 1 and set(record["results"]) == {"torch", "onnx"}
    for runtime in record["results"].values():
        assert set(runtime) == {"batch1", "batch16"}
        for batch, r in runtime.items():
            assert r["calls"] >= 5 and 0 < r["p50_ms"] <= r["p99_ms"]
            size = int(batch.removeprefix("batch"))
            assert r["images_per_s"] == pytest.approx(size / (r["p50_ms"] / 1000))


def test_inference_bench_rejects_a_bad_batch(tmp_path, capsys):
    assert main(["bench", "inference", "--batches", "0", "--out", str(tmp_path / "x.json")]) == 2
    assert "--batches" in capsys.readouterr().err and not (tmp_path / "x.json").exists()
