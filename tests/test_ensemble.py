"""`digitlab ensemble`: the averaged model, the run folder it writes, and its errors."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import safetensors.torch
import torch

import digitlab
from digitlab import api, ensemble, io
from digitlab.cli import main
from digitlab.config import resolve
from digitlab.engine import run as runs
from digitlab.errors import DigitlabError
from digitlab.models import registry

WIDTHS = [4, 8, 8]


def member(path: Path, seed: int, **overrides) -> Path:
    """An untrained, seeded recognition run on the rendered synthetic digits: plumbing in milliseconds."""
    cfg = resolve("recognize", "recognize-smoke", {"model_args": {"widths": WIDTHS}, "seed": seed, **overrides})
    path.mkdir(parents=True)
    torch.manual_seed(seed)
    io.write_json(path / "config.json", cfg.to_dict())
    runs.save_model(path, registry.create("digitnet", widths=WIDTHS).eval(), cfg)
    return path


def test_the_output_is_the_log_of_the_members_mean_probability():
    torch.manual_seed(0)
    spec = {"model": "digitnet", "model_args": {"widths": WIDTHS}}
    model = registry.create("ensemble", "recognize", members=[spec, spec, spec]).eval()
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        want = torch.stack([m(x).softmax(1) for m in model.members]).mean(0)
        got = model(x)
    assert torch.allclose(got.exp(), want, atol=1e-6)
    assert not torch.allclose(model.members[0](x).softmax(1), want, atol=1e-3)  # the members do differ


def test_combine_writes_a_run_that_loads_evaluates_and_predicts(tmp_path, capsys):
    a, b = member(tmp_path / "a", 0), member(tmp_path / "b", 1)
    out = tmp_path / "ab"
    assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 0
    assert "2 members" in capsys.readouterr().out
    metrics = io.read_json(out / "metrics.json")
    meta = io.read_json(out / "model.json")
    assert meta["model"] == "ensemble" and metrics["members"] == [str(a), str(b)] and meta["member_seeds"] == [0, 1]
    assert meta["calibration"]["temperature"] > 0  # fitted again on validation
    # the recorded test accuracy is what re-evaluating the saved folder gives
    assert api.evaluate(out)["test_acc"] == pytest.approx(metrics["test_acc"])
    # and the loaded model is the average of the two members
    x = torch.rand(4, 28, 28)
    probs = [torch.from_numpy(digitlab.load(r).logits(x)).softmax(1) for r in (a, b)]
    got = torch.from_numpy(digitlab.load(out).logits(x)).exp()
    assert torch.allclose(got, (probs[0] + probs[1]) / 2, atol=1e-5)
    reading = digitlab.load(out).predict(x[0].numpy())
    assert sum(reading.probabilities) == pytest.approx(1, abs=1e-5)
    assert reading.digit == max(range(10), key=lambda d: reading.probabilities[d])


def test_onnx_export_of_an_ensemble_matches_pytorch(tmp_path, mnist_dir, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("DIGITLAB_DATA", str(mnist_dir))
    out = tmp_path / "ab"
    assert main(["ensemble", str(member(tmp_path / "a", 0)), str(member(tmp_path / "b", 1)), "--out", str(out)]) == 0
    assert main(["export", str(out)]) == 0
    diff = float(capsys.readouterr().out.split("logits ")[1].split()[0].rstrip(","))
    assert diff < 1e-3


def test_the_preset_form_trains_the_members_and_a_rerun_keeps_them(tmp_path):
    out = tmp_path / "max"
    args = ["ensemble", "--preset", "recognize-smoke", "--seeds", "0", "1", "--set", "epochs=1", "--out", str(out), "--quiet"]
    assert main(args) == 0
    first = io.read_json(out / "metrics.json")
    assert first["members"] == [str(out / "members" / "s0"), str(out / "members" / "s1")]
    assert io.read_json(out / "members" / "s1" / "config.json")["seed"] == 1
    stamp = (out / "members" / "s0" / "model.safetensors").stat().st_mtime_ns
    (out / "config.json").unlink()  # as if the combine step had been interrupted
    assert main(args) == 0
    assert (out / "members" / "s0" / "model.safetensors").stat().st_mtime_ns == stamp  # not trained again
    assert io.read_json(out / "metrics.json")["test_acc"] == first["test_acc"]


def test_the_members_form_trains_members_of_different_recipes(tmp_path):
    wide = tmp_path / "smoke-wide.yaml"  # a second recipe: recognize-smoke with another net
    wide.write_text("task: recognize\ndataset: synthetic\nval_size: 500\nmodel: digitnet\n"
                    "model_args: {widths: [8, 16, 16], convs_per_stage: 2}\nepochs: 1\nbatch_size: 64\nthreads: 1\n")
    out = tmp_path / "mix"
    args = ["ensemble", "--members", "recognize-smoke:0", "recognize-smoke:1", f"{wide}:0", "--set", "epochs=1",
            "--out", str(out), "--quiet"]
    assert main(args) == 0
    names = ["recognize-smoke-s0", "recognize-smoke-s1", "smoke-wide-s0"]
    assert io.read_json(out / "metrics.json")["members"] == [str(out / "members" / n) for n in names]
    assert io.read_json(out / "members" / "smoke-wide-s0" / "config.json")["model_args"]["convs_per_stage"] == 2
    kinds = [m["model_args"]["widths"] for m in io.read_json(out / "model.json")["model_args"]["members"]]
    assert kinds == [[8, 16, 32], [8, 16, 32], [8, 16, 16]]
    bar = torch.zeros(28, 28)
    bar[6:22, 13:16] = 1.0  # a 1
    assert api.Recognizer(out).predict(bar).digit in range(10)


def test_jobs_trains_members_side_by_side_into_the_same_members(tmp_path, capsys):
    """--jobs 2 trains the two members in two processes at once; at the same thread count each
    member is the one a run of its own gives (training is deterministic per thread count)."""
    common = ["--preset", "recognize-smoke", "--seeds", "0", "1", "--set", "epochs=1"]
    assert main(["ensemble", *common, "--quiet", "--out", str(tmp_path / "one")]) == 0
    capsys.readouterr()
    assert main(["ensemble", *common, "--jobs", "2", "--out", str(tmp_path / "two")]) == 0
    lines = capsys.readouterr().out.splitlines()  # no interleaved per-epoch lines: one per member
    assert lines[0].startswith("training 2 members, up to 2 at once") and len(lines) == 4
    assert lines[1].startswith(f"{tmp_path / 'two' / 'members' / 's0'}: val acc ")
    for seed in (0, 1):
        one = safetensors.torch.load_file(tmp_path / "one" / "members" / f"s{seed}" / "model.safetensors")
        two = safetensors.torch.load_file(tmp_path / "two" / "members" / f"s{seed}" / "model.safetensors")
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one)
    assert io.read_json(tmp_path / "two" / "metrics.json")["test_acc"] == io.read_json(tmp_path / "one" / "metrics.json")["test_acc"]


def test_jobs_share_the_cores_unless_threads_are_set(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(ensemble, "_train_member", lambda cfg, path, quiet: seen.append(cfg.threads))
    monkeypatch.setattr(ensemble, "ProcessPoolExecutor", _InlinePool)
    monkeypatch.setattr(ensemble.os, "cpu_count", lambda: 8)
    ensemble.train_members([("recognize-smoke", 0), ("recognize-smoke", 1)], tmp_path / "a", jobs=2)
    ensemble.train_members([("recognize-smoke", 0), ("recognize-smoke", 1)], tmp_path / "b", jobs=4)  # 2 members
    ensemble.train_members([("recognize-smoke", 0), ("recognize-smoke", 1)], tmp_path / "c", jobs=2, threads=3)
    assert seen == [4, 4, 4, 4, 3, 3]


class _InlinePool:
    """ProcessPoolExecutor's shape, run in this process: what the members are given, not how."""

    def __init__(self, jobs, mp_context=None):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        fn(*args)
        return type("Done", (), {"result": lambda self: None})()


def test_a_user_error_keeps_its_fix_across_processes():
    error = pickle.loads(pickle.dumps(DigitlabError("MNIST is missing", "run digitlab fetch")))
    assert isinstance(error, DigitlabError) and (error.problem, error.fix) == ("MNIST is missing", "run digitlab fetch")


@pytest.mark.parametrize("case, message", [
    ("one run", "at least two runs"),
    ("other split", "do not share one data set and validation split"),
    ("nested", "is an ensemble already"),
    ("taken", "already holds a run"),
    ("runs and preset", "give one of: RUN folders, --preset or --members"),
    ("preset and members", "give one of: RUN folders, --preset or --members"),
    ("set without preset", "--set changes how members are trained"),
    ("seeds with members", "--seeds goes with --preset"),
    ("one seed", "at least two members, each a different preset and seed"),
    ("same member twice", "at least two members, each a different preset and seed"),
    ("same seed twice", "at least two members, each a different preset and seed"),
    ("bad member", "--members takes PRESET:SEED, got 'recognize-smoke'"),
    ("bad seed", "--members takes PRESET:SEED, got 'recognize-smoke:x'"),
    ("no jobs", "--jobs must be 1 or more, got 0"),
    ("jobs with runs", "--jobs says how many members to train at once"),
])
def test_bad_requests_are_one_clear_error(tmp_path, capsys, case, message):
    a, b = member(tmp_path / "a", 0), member(tmp_path / "b", 1)
    out = tmp_path / "out"
    argv = {
        "one run": [str(a)],
        "other split": [str(a), str(member(tmp_path / "c", 2, val_size=400))],
        "nested": [str(a), str(tmp_path / "ab")],
        "taken": [str(a), str(b)],
        "runs and preset": [str(a), "--preset", "recognize-smoke"],
        "set without preset": [str(a), str(b), "--set", "epochs=1"],
        "preset and members": ["--preset", "recognize-smoke", "--members", "recognize-smoke:0"],
        "seeds with members": ["--members", "recognize-smoke:0", "recognize-smoke:1", "--seeds", "0"],
        "one seed": ["--preset", "recognize-smoke", "--seeds", "3", "3"],
        "same member twice": ["--members", "recognize-smoke:3", "recognize-smoke:3"],
        "same seed twice": ["--members", "recognize-smoke:0", "recognize-smoke:0", "recognize-smoke:1"],
        "bad member": ["--members", "recognize-smoke", "recognize-smoke:1"],
        "bad seed": ["--members", "recognize-smoke:x", "recognize-smoke:1"],
        "no jobs": ["--preset", "recognize-smoke", "--seeds", "0", "1", "--jobs", "0"],
        "jobs with runs": [str(a), str(b), "--jobs", "2"],
    }[case]
    if case == "nested":
        assert main(["ensemble", str(a), str(b), "--out", str(tmp_path / "ab")]) == 0
    if case == "taken":
        assert main(["ensemble", str(a), str(b), "--out", str(out)]) == 0
        before = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert main(["ensemble", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    if case == "taken":
        assert (out / "metrics.json").read_bytes() == before
    else:
        assert not (out / "config.json").exists()
