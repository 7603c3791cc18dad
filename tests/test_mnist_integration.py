"""One short training run on the real MNIST (the shared copy): accuracy far above chance."""

from __future__ import annotations

import json

import pytest

from digitlab.cli import main


@pytest.mark.slow
def test_brief_training_on_real_mnist(mnist_dir, tmp_path):
    run = tmp_path / "run"
    code = main(["train", "recognize", "--data-dir", str(mnist_dir), "--out", str(run), "--quiet",
                 "--set", "epochs=1", "subset=0.1", "model_args.widths=[16,32,64]", "threads=2",
                 "figures=false", "tensorboard=false"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.90  # chance is 0.10
    assert sum(1 for _ in open(run / "history.jsonl")) == 1
