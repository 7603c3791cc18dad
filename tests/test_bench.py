"""`digitlab bench train`: every seed trained in its own process, test metrics summarised over seeds."""

from __future__ import annotations

import json
import statistics

import pytest

from digitlab.cli import main


def test_train_bench_summarises_each_seed_and_checks_the_target(tmp_path):
    out, runs = tmp_path / "bench.json", tmp_path / "runs"
    code = main(["bench", "train", "recognize", "--preset", "recognize-smoke", "--seeds", "0", "1",
                 "--set", "figures=false", "tensorboard=false", "epochs=1",
                 "--target", "0.2", "--out", str(out), "--keep-runs", str(runs)])
    assert code == 0
    record = json.loads(out.read_text())
    assert [t["seed"] for t in record["trials"]] == [0, 1]
    for trial in record["trials"]:  # each seed's figures are its run's own
        metrics = json.loads((runs / f"recognize-smoke-s{trial['seed']}" / "metrics.json").read_text())
        assert trial["test_acc"] == metrics["test_acc"] and trial["epochs_run"] == 1
        assert trial["command_seconds"] > metrics["train_seconds"] > 0
    accs = [t["test_acc"] for t in record["trials"]]
    assert record["test_acc"]["mean"] == pytest.approx(statistics.fmean(accs))
    assert record["test_acc"]["std"] == pytest.approx(statistics.stdev(accs))
    assert record["target_met"] == (statistics.fmean(accs) >= 0.2)
    assert record["config"]["epochs"] == 1 and record["environment"]["threads"] >= 1


def test_train_bench_rejects_a_bad_preset_before_training(tmp_path, capsys):
    assert main(["bench", "train", "compare", "--preset", "compare-nope", "--out", str(tmp_path / "x.json"),
                 "--keep-runs", str(tmp_path / "runs")]) != 0
    assert "unknown preset 'compare-nope'" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "runs").exists()
