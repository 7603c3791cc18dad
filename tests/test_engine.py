"""The training loop on tiny synthetic runs: files written, resume equivalence, DDP, stopping."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from digitlab import config
from digitlab.cli import main
from digitlab.engine import loop
from digitlab.engine import run as runs
from digitlab.errors import DigitlabError


def smoke(**overrides) -> config.TrainConfig:
    base = {"progress": False, "figures": False, "tensorboard": False}
    return config.resolve("recognize", "recognize-smoke", {**base, **overrides})


def test_train_writes_a_complete_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--out", str(run), "--quiet", "--wait-report"]) == 0
    for name in ("config.json", "history.jsonl", "metrics.json", "model.safetensors", "model.json",
                 "checkpoint.pt", "report.html", "figures/curves.png", "figures/confusion.png",
                 "figures/per_class.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").rglob("events.out.tfevents.*")), "no TensorBoard events"
    history = runs.read_history(run)
    assert [h["epoch"] for h in history] == [1, 2]
    assert len(history[0]["val_per_class_acc"]) == 10
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_acc"] > 0.5  # chance is 0.1; synthetic digits are easy
    assert metrics["params"] == sum(t.numel() for k, t in load_file(run / "model.safetensors").items()
                                    if "running" not in k and "num_batches" not in k)
    # the saved model reproduces the recorded test accuracy
    assert main(["eval", str(run), "--json"]) == 0
    assert json.loads((run / "eval-test.json").read_text())["test_acc"] == pytest.approx(metrics["test_acc"])


def test_the_command_answers_first_and_a_background_process_draws_the_report(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--out", str(run), "--set", "tensorboard=false"]) == 0
    printed = capsys.readouterr().out
    assert "test acc" in printed and "being drawn in the background" in printed
    assert (run / "metrics.json").is_file()
    deadline = time.monotonic() + 120
    while not (run / "report.md").is_file() and time.monotonic() < deadline:  # report.md is its last file
        time.sleep(0.2)
    log = (run / "report.log").read_text()
    assert (run / "report.md").is_file(), log
    assert "Traceback" not in log and log.rstrip().endswith("report.md"), log
    for name in ("report.html", "figures/curves.png", "figures/confusion.png", "figures/per_class.png"):
        assert (run / name).is_file(), name
    assert "data:image/png;base64," in (run / "report.html").read_text()


def test_redraw_gives_a_run_trained_without_figures_the_same_figures(tmp_path):
    run = loop.train(smoke(), run_dir=_mk(tmp_path / "r"), quiet=True)  # figures=false
    assert not (run / "figures").exists() and not (run / "report.html").exists()
    assert main(["report", str(run), "--redraw"]) == 0
    drawn = {p.name for p in (run / "figures").iterdir()}
    assert {"confusion.png", "curves.png", "per_class.png"} <= drawn  # misclassified.png only if any are
    page = (run / "report.html").read_text()
    assert 'alt="Confusion"' in page and 'alt="Curves"' in page
    assert main(["report", str(run), str(run), "--redraw"]) == 2  # one run only


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_resume_after_kill_gives_the_same_result(tmp_path, monkeypatch, ema):
    cfg = smoke(epochs=3, augment={"rotate": 10, "translate": 0.1}, model_args={"widths": [8, 16, 32], "dropout": 0.2},
                ema=ema)
    straight = loop.train(cfg, run_dir=_mk(tmp_path / "a"), quiet=True)

    real_save = runs.save_checkpoint
    calls = {"n": 0}

    def save_then_die(run_dir, state):
        real_save(run_dir, state)
        calls["n"] += 1
        if calls["n"] == 1:
            raise KeyboardInterrupt  # killed right after the epoch-1 checkpoint

    monkeypatch.setattr(runs, "save_checkpoint", save_then_die)
    interrupted = _mk(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        loop.train(cfg, run_dir=interrupted, quiet=True)
    assert not (interrupted / "metrics.json").exists()
    monkeypatch.setattr(runs, "save_checkpoint", real_save)
    assert main(["train", "--resume", str(interrupted), "--quiet"]) == 0

    a, b = load_file(straight / "model.safetensors"), load_file(interrupted / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    ha, hb = runs.read_history(straight), runs.read_history(interrupted)
    assert [h["val_acc"] for h in ha] == [h["val_acc"] for h in hb]
    ma, mb = (json.loads((p / "metrics.json").read_text()) for p in (straight, interrupted))
    assert ma["test_acc"] == mb["test_acc"]


def test_moving_average_is_what_is_saved_and_does_not_change_training(tmp_path):
    plain = loop.train(smoke(epochs=1), run_dir=_mk(tmp_path / "plain"), quiet=True)
    averaged = loop.train(smoke(epochs=1, ema=0.9), run_dir=_mk(tmp_path / "ema"), quiet=True)
    raw_plain = runs.load_checkpoint(plain)["model"]
    ckpt = runs.load_checkpoint(averaged)
    saved = load_file(averaged / "model.safetensors")
    ema_weights = {k.removeprefix("module."): v for k, v in ckpt["ema"].items() if k.startswith("module.")}
    differs = False
    for key, value in raw_plain.items():
        torch.testing.assert_close(ckpt["model"][key], value, msg=key)  # same raw trajectory
        torch.testing.assert_close(saved[key], ema_weights[key], msg=key)  # the average is saved
        differs |= value.is_floating_point() and not torch.allclose(saved[key], value)
    assert differs, "the saved weights are the raw weights, not their moving average"
    with pytest.raises(DigitlabError, match="ema"):
        config.resolve("recognize", None, {"ema": 1.0})


def test_moving_average_warms_up_then_keeps_its_decay():
    update = loop._ema_update(0.99)
    for n, expected_decay in ((1, 2 / 11), (10, 11 / 20), (10_000, 0.99)):
        averaged, counter = [torch.zeros(3)], [torch.zeros((), dtype=torch.long)]
        update(averaged + counter, [torch.ones(3), torch.tensor(7)], torch.tensor(n))
        torch.testing.assert_close(averaged[0], torch.full((3,), 1 - expected_decay))
        assert counter[0].item() == 7  # integer buffers are copied, not averaged


def test_early_stopping_on_target_uses_validation(tmp_path):
    run = loop.train(smoke(epochs=6, target=0.3), run_dir=_mk(tmp_path / "r"), quiet=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["epochs_run"] < 6
    assert "target" in metrics["stop_reason"]
    assert metrics["val_acc"] >= 0.3


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "step"), ("rmsprop", "cosine"),
                                                ("adadelta", "plateau"), ("adam", "none")])
def test_every_optimizer_and_schedule_trains(tmp_path, optimizer, schedule):
    lr = {"sgd": 0.05, "rmsprop": 0.002, "adadelta": 1.0, "adam": 0.003}[optimizer]
    cfg = smoke(epochs=2, optimizer=optimizer, schedule=schedule, lr=lr, nesterov=optimizer == "sgd",
                grad_clip=1.0, label_smoothing=0.1, weight_decay=1e-4)
    run = loop.train(cfg, run_dir=_mk(tmp_path / "r"), quiet=True)
    history = runs.read_history(run)
    assert history[-1]["train_loss"] < history[0]["train_loss"] or history[-1]["val_acc"] > 0.3
    if schedule == "step":
        assert history[0]["lr"] == pytest.approx(lr)


def test_ddp_two_gloo_processes_match_one_process_quality(tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "digitlab", "train", "recognize", "--preset", "recognize-smoke", "--out", str(run),
           "--quiet", "--set", "figures=false", "tensorboard=false"]
    # Own process group: if it hangs, the timeout kills torchrun AND its worker processes.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("DDP run hung for 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    ddp = json.loads((run / "metrics.json").read_text())
    assert ddp["world_size"] == 2
    single = loop.train(smoke(), run_dir=_mk(tmp_path / "one"), quiet=True)
    one = json.loads((single / "metrics.json").read_text())
    assert ddp["test_acc"] > 0.5
    assert abs(ddp["test_acc"] - one["test_acc"]) < 0.15


def test_bad_config_is_a_clear_error(tmp_path):
    with pytest.raises(DigitlabError, match="unknown config key 'lrr'"):
        config.resolve("recognize", None, {"lrr": 1})
    with pytest.raises(DigitlabError, match="optimizer"):
        config.resolve("recognize", None, {"optimizer": "adamm"})
    with pytest.raises(DigitlabError, match="unknown preset"):
        config.resolve("recognize", "nope", {})
    with pytest.raises(DigitlabError, match="larger than the training split"):
        loop.train(smoke(batch_size=100000), run_dir=_mk(tmp_path / "r"), quiet=True)


def test_cli_errors_exit_nonzero_with_the_fix(tmp_path, capsys):
    assert main(["train", "recognize", "--set", "epochs=-1"]) == 2
    err = capsys.readouterr().err
    assert "epochs" in err and "fix:" in err
    assert main(["eval", str(tmp_path)]) == 2
    assert "not a digitlab run directory" in capsys.readouterr().err


def _mk(path: Path) -> Path:
    path.mkdir(parents=True)
    return path


@pytest.mark.parametrize("steps", [1, 2, 3, 4, 7])
def test_onecycle_survives_very_short_runs(steps):
    from digitlab.engine.optim import Schedule, make_optimizer

    cfg = smoke(epochs=1, schedule="onecycle")
    opt = make_optimizer(cfg, [torch.nn.Parameter(torch.zeros(1))])
    schedule = Schedule(cfg, opt, steps)
    for _ in range(steps):
        opt.step()
        schedule.after_batch()
    assert opt.param_groups[0]["lr"] <= cfg.lr


@pytest.mark.parametrize("name", config.list_presets())
def test_every_shipped_preset_resolves_and_builds_its_model(name):
    from digitlab.models import registry
    task = config.load_preset(name).get("task") or name.split("-")[0]  # denoise-fast is a denoise preset
    assert task in config.TASKS
    cfg = config.resolve(task, name, {})
    assert cfg.epochs >= 1
    assert registry.count_params(registry.create(cfg.model, **cfg.model_kwargs())) > 0
