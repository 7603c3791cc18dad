"""Careless and hostile input to training: bad config values, damaged run files, divergence, leftovers.

Every case must end in one DigitlabError (CLI: exit 2, problem + fix, no traceback), before a run
directory is made where that is possible, and must leave nothing that blocks a retry.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from digitlab import config, io
from digitlab.cli import main
from digitlab.engine import loop
from digitlab.engine import run as runs
from digitlab.errors import DigitlabError

SMOKE = ["--preset", "recognize-smoke", "--quiet", "--set", "figures=false", "tensorboard=false"]


def smoke(**overrides) -> config.TrainConfig:
    base = {"progress": False, "figures": False, "tensorboard": False, "epochs": 1}
    return config.resolve("recognize", "recognize-smoke", {**base, **overrides})


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """One finished 1-epoch smoke run; tests copy it before damaging anything."""
    run = tmp_path_factory.mktemp("runs") / "good"
    loop.train(smoke(), run_dir=run, quiet=True)
    return run


def copy_run(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


# --- config: every field checked before anything is created ---------------------------------------

BAD_SETS = [
    "subset=abc", "weight_decay=-1", "label_smoothing=5", "threads=-1", "device=foo", "seed=abc",
    "augment.rotate=abc", "augment.rotat=10", "target=abc", "step_size=0", "lr=.inf", "lr=.nan",
    "warmup_frac=5", "epochs=true", "epochs=2.5", "task_args.protocl=small", "batch_size=0",
    "momentum=2", "nesterov=3", "gamma=0", "plateau_factor=1", "min_lr=-1", "grad_clip=-1",
    "val_size=0", "patience=-1", "amp=yes please", "model_args.widht=8", "activation=nope",
    "model=resnet_nope", "dataset=cifar", "augment=5", "optimizer=lbfgs", "schedule=warm",
]


@pytest.mark.parametrize("item", BAD_SETS)
def test_bad_set_value_is_exit_2_before_any_folder(item, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "recognize", *SMOKE, item, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "fix:" in err and "Traceback" not in err
    assert item.split("=")[0].split(".")[-1] in err  # names the key
    assert not out.exists()


def test_schema_mirrors_every_config_field():
    assert set(config._Schema.model_fields) == set(config.field_names())


def test_every_error_is_listed_at_once():
    with pytest.raises(DigitlabError) as exc:
        config.resolve("recognize", None, {"lr": -1, "seed": "x"})
    assert "lr" in exc.value.problem and "seed" in exc.value.problem


# Property: any value for any key either gives a valid config or one DigitlabError, never a crash,
# and an accepted config survives the round trip through config.json.
VALUES = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                   st.text(max_size=12), st.lists(st.integers(0, 64), max_size=3),
                   st.dictionaries(st.text(max_size=8), st.integers(), max_size=2))
KEYS = st.sampled_from(config.field_names() + ["augment.rotate", "augment.scale", "augment.bogus",
                                               "model_args.widths", "task_args.x", "nope", "lr.x"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, VALUES, max_size=3))
def test_fuzz_overrides_are_valid_or_one_clear_error(values):
    try:
        cfg = config.resolve("recognize", "recognize-smoke", values)
    except DigitlabError as exc:
        assert exc.problem and exc.fix
        return
    again = config.TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert math.isfinite(cfg.lr) and cfg.lr > 0 and isinstance(cfg.epochs, int)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=20), max_size=3))
def test_fuzz_parse_set_never_crashes(items):
    try:
        config.parse_set(items)
    except DigitlabError:
        pass


# --- damaged run files --------------------------------------------------------------------------------

CHECKPOINTS = {
    "empty": b"",
    "truncated": None,  # first half of the real file
    "text": b"hello, not a checkpoint\n",
    "foreign": None,  # a valid torch file holding something else
}


@pytest.mark.parametrize("kind", list(CHECKPOINTS))
def test_damaged_checkpoint_on_resume_is_exit_2(kind, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    ckpt = run / "checkpoint.pt"
    if kind == "truncated":
        ckpt.write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    elif kind == "foreign":
        torch.save({"weights": torch.zeros(3)}, ckpt)
    else:
        ckpt.write_bytes(CHECKPOINTS[kind])
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot resume from" in err and "checkpoint.pt" in err and "fix:" in err


def test_checkpoint_of_another_model_is_exit_2(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "metrics.json").unlink()  # killed before finishing: a finished run is not resumed at all
    state = runs.load_checkpoint(run)
    state["model"] = {"conv.weight": torch.zeros(2)}
    torch.save(state, run / "checkpoint.pt")
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "does not fit this run's model" in capsys.readouterr().err


@pytest.mark.parametrize("name,text", [("config.json", "{not json"), ("config.json", "[1, 2]"),
                                       ("config.json", '{"lr": "fast"}'), ("model.json", ""),
                                       ("model.json", '{"model": 5}'), ("model.json", '{"model": "nope"}')])
def test_damaged_json_is_exit_2(name, text, finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "r")
    (run / name).write_text(text)
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err
    assert name in err and "fix:" in err and "Traceback" not in err


# --- divergence ---------------------------------------------------------------------------------------

def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from digitlab.tasks.recognize import RecognizeTask

    real_step, calls = RecognizeTask.step, {"n": 0}
    cfg = smoke(epochs=3)
    steps = 0

    def step(self, model, batch):
        nonlocal steps
        out = real_step(self, model, batch)
        calls["n"] += 1
        steps = steps or self.train_size // cfg.batch_size
        if calls["n"] > steps + 2:  # epoch 2 goes bad after two steps
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(RecognizeTask, "step", step)
    run = tmp_path / "r"
    with pytest.raises(DigitlabError, match="diverged"):
        loop.train(cfg, run_dir=run, quiet=True)
    assert runs.load_checkpoint(run)["epoch"] == 1  # epoch 2 never saved
    assert all(torch.isfinite(v).all() for v in runs.load_checkpoint(run)["model"].values() if v.is_floating_point())
    assert not (run / "model.safetensors").exists()


def test_huge_learning_rate_fails_with_exit_2(tmp_path, capsys):
    assert main(["train", "recognize", *SMOKE, "lr=1e30", "epochs=1", "--out", str(tmp_path / "r")]) == 2
    assert "diverged" in capsys.readouterr().err


# --- leftovers ----------------------------------------------------------------------------------------

def test_failure_before_first_checkpoint_leaves_a_retryable_folder(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "recognize", *SMOKE, "batch_size=100000", "--out", str(out)]) == 2
    assert "larger than the training split" in capsys.readouterr().err
    assert not out.exists() or not any(out.iterdir())
    assert main(["train", "recognize", *SMOKE, "epochs=1", "--out", str(out)]) == 0


def test_failure_in_a_new_auto_named_folder_removes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("DIGITLAB_RUNS", str(tmp_path / "runs"))
    with pytest.raises(DigitlabError, match="larger than"):
        loop.train(smoke(batch_size=100000), quiet=True)
    assert not list((tmp_path / "runs").rglob("config.json"))


def test_temp_file_of_a_killed_save_is_removed_on_resume(finished_run, tmp_path):
    run = copy_run(finished_run, tmp_path / "r")
    (run / "metrics.json").unlink()  # killed before finishing: a finished run is left untouched
    leftover = run / ".checkpoint.pt.k1ll3d.tmp"
    leftover.write_bytes(b"half a checkpoint")
    assert main(["train", "--resume", str(run), "--quiet"]) == 0
    assert not leftover.exists()


def test_study_trial_with_corrupt_checkpoint_restarts_from_scratch(finished_run, tmp_path, capsys):
    from digitlab.study import runner

    run = copy_run(finished_run, tmp_path / "r")
    cfg = runs.load_config(run)
    assert runner._resumable(run, cfg, "t0")
    (run / "checkpoint.pt").write_bytes(b"\0" * 100)
    assert not runner._resumable(run, cfg, "t0")
    assert "starting this trial from scratch" in capsys.readouterr().out


# --- file modes ---------------------------------------------------------------------------------------

def test_run_files_get_the_umask_mode_and_io_leaves_the_umask_alone(finished_run, tmp_path):
    from safetensors.torch import save_file

    old = os.umask(0o027)
    try:
        io.write_text(tmp_path / "a.json", "{}")
        with io.atomic_path(tmp_path / "m.safetensors") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp))
        assert os.umask(0o027) == 0o027  # nothing in io changed it
    finally:
        os.umask(old)
    for name in ("a.json", "m.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o640, name
    modes = {stat.S_IMODE((finished_run / n).stat().st_mode) for n in ("model.safetensors", "model.json", "config.json")}
    assert len(modes) == 1
    assert not list(Path(io.__file__).read_text().split("os.umask(")[1:]), "io must not call os.umask"


def test_dataclass_fields_have_defaults_that_validate():
    config.validate(config.TrainConfig())
    assert {f.name for f in dataclasses.fields(config.TrainConfig)} == set(config.field_names())


def test_exponent_without_a_dot_is_a_number_as_documented():
    assert config.parse_set(["lr=1e-3", "min_lr=2E-6", "model=1e"]) == {"lr": 1e-3, "min_lr": 2e-6, "model": "1e"}


def test_sub_key_of_a_non_mapping_is_a_clear_error():  # found by the fuzz test above
    with pytest.raises(DigitlabError, match="not a mapping"):
        config.resolve("recognize", None, {"augment": None, "augment.rotate": 10})
