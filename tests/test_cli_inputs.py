"""Bad input a new user gives the commands: one error naming the problem and the fix, exit status 2,
and no work done first. Also what the commands print when they succeed quietly."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from PIL import Image

from digitlab import config
from digitlab.cli import main
from digitlab.errors import DigitlabError


@pytest.fixture
def noisy_png(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((28, 28), np.uint8)
    arr[6:22, 12:16] = 255
    arr = np.clip(arr + rng.normal(0, 60, arr.shape), 0, 255).astype(np.uint8)
    path = tmp_path / "noisy.png"
    Image.fromarray(arr).save(path)
    return path


@pytest.mark.parametrize("flags, problem", [
    (["-o", "{tmp}"], "is a folder"),                      # was an IsADirectoryError traceback
    (["-o", "{tmp}/clean.jpg"], "does not end in .png"),   # was a PNG silently named .jpg
    (["-o", "{tmp}/noisy.png/clean.png"], "which is a file"),
    (["--scale", "100000"], "from 1 to 64"),                # was a 7 TiB allocation and a MemoryError
    (["--scale", "0"], "from 1 to 64"),
])
def test_denoise_rejects_a_bad_output_before_running(noisy_png, capsys, flags, problem):
    flags = [f.format(tmp=noisy_png.parent) for f in flags]
    assert main(["denoise", str(noisy_png), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and problem in err and "fix: " in err
    assert sorted(p.name for p in noisy_png.parent.iterdir()) == ["noisy.png"]  # nothing written


def test_denoise_writes_the_png_it_was_asked_for(noisy_png, capsys):
    out = noisy_png.parent / "clean.png"
    assert main(["denoise", str(noisy_png), "-o", str(out), "--scale", "2"]) == 0
    assert Image.open(out).size == (56, 56)
    assert str(out) in capsys.readouterr().out


def test_denoised_save_checks_the_path_too(tmp_path):
    from digitlab.api import Denoised

    d = Denoised(np.zeros((28, 28), np.float32), None, None)
    with pytest.raises(DigitlabError, match="does not end in .png"):
        d.save(tmp_path / "clean.jpg")
    with pytest.raises(DigitlabError, match="from 1 to 64"):
        d.save(tmp_path / "clean.png", scale=2.5)
    assert d.save(tmp_path / "clean.png", scale=3) == tmp_path / "clean.png"


def test_a_folder_without_images_is_named(tmp_path, capsys):
    assert main(["predict", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} is a folder" in err and "fix: " in err


def test_a_wrong_choice_lists_every_choice():
    with pytest.raises(DigitlabError) as exc:
        config.resolve("recognize", None, {"optimizer": "foo"})
    assert all(f"'{name}'" in exc.value.fix for name in config.OPTIMIZERS), exc.value.fix


def test_an_unknown_task_is_named():
    import digitlab

    with pytest.raises(DigitlabError, match="unknown task 'recognise'"):  # was a KeyError
        digitlab.train("recognise")


@pytest.mark.parametrize("task, key", [("recognize", "junk_weight"), ("compare", "margin"),
                                       ("denoise", "kind_weight")])
def test_negative_task_args_are_refused(task, key):
    with pytest.raises(DigitlabError, match=f"task_args.{key} = -1 is negative"):
        config.resolve(task, None, {f"task_args.{key}": -1})
    config.resolve(task, None, {f"task_args.{key}": 0})  # zero is fine: off


def test_serve_port_and_address_errors_name_the_fix():
    protocol = pytest.importorskip("digitlab.serve.protocol", reason="serve extra not installed")
    with pytest.raises(DigitlabError, match="not a TCP port"):
        protocol.check_port("127.0.0.1", 99999)  # was an OverflowError traceback
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(DigitlabError) as exc:
            protocol.check_port("127.0.0.1", busy.getsockname()[1])
        assert "another port" in exc.value.fix
    with pytest.raises(DigitlabError) as exc:
        protocol.check_port("192.0.2.1", 8000)  # TEST-NET-1: never an address of this machine
    assert "--host" in exc.value.fix


def test_quiet_training_prints_its_run_folder(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--out", str(run), "--quiet",
                 "--set", "epochs=1", "figures=false", "tensorboard=false"]) == 0
    assert capsys.readouterr().out.strip() == str(run)


def test_bench_help_shows_one_example_a_line(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "startup", "--help"])
    lines = capsys.readouterr().out.splitlines()
    assert "  digitlab bench startup" in lines
    assert any(line.startswith("  digitlab bench startup --run ") for line in lines)


@pytest.mark.parametrize("value", ["abc", "[32,-1]", "[]", "64"])
def test_bad_model_widths_are_named_before_any_data_loads(tmp_path, monkeypatch, capsys, value):
    monkeypatch.setenv("DIGITLAB_DATA", str(tmp_path / "no-data"))  # loading would fail differently
    run = tmp_path / "run"
    assert main(["train", "recognize", "--out", str(run), "--set", f"model_args.widths={value}"]) == 2
    err = capsys.readouterr().err
    assert "model_args.widths" in err and "list of positive integers" in err, err
    from digitlab import config
    from digitlab.models import registry

    model = config.resolve("recognize", None, {}).model  # the default preset's model
    example = ",".join(map(str, registry.defaults(model)["widths"]))
    assert f"model_args.widths=[{example}]" in err  # the fix shows the model's own default as an example
    assert not run.exists()


@pytest.mark.parametrize("val_size", [0, 1000, 60000])
def test_a_bad_val_size_names_the_valid_range(val_size):
    from digitlab.tasks.base import split_indices

    with pytest.raises(DigitlabError) as exc:
        split_indices(1000, val_size, 0)
    assert "from 1 to 999" in exc.value.fix and "val_size=100" in exc.value.fix, exc.value.fix


def test_resuming_a_finished_run_says_so_without_loading_data_or_writing(tmp_path, monkeypatch, capsys):
    from digitlab.tasks import base

    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke", "--out", str(run), "--quiet",
                 "--set", "epochs=1", "figures=false", "tensorboard=false"]) == 0
    capsys.readouterr()
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}

    def no_data(*args, **kwargs):
        raise AssertionError("a finished run reloaded its data")

    monkeypatch.setattr(base, "split_indices", no_data)
    assert main(["train", "--resume", str(run)]) == 0
    assert "already finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # no file touched


def test_compare_usage_says_it_takes_one_pair(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--help"])
    usage = capsys.readouterr().out.split("\n\n")[0]
    assert usage.endswith("[RUN] A B") and "..." not in usage, usage


def test_missing_bm3d_names_the_extra(monkeypatch):
    import sys

    import torch

    from digitlab.bench import denoise

    monkeypatch.setitem(sys.modules, "bm3d", None)  # not installed, whatever this machine has
    with pytest.raises(DigitlabError) as exc:
        denoise.classical("bm3d", torch.zeros(1, 1, 28, 28))
    assert exc.value.fix.startswith("pip install 'digitlab[bm3d]'"), exc.value.fix  # as the README says


@pytest.mark.parametrize("command", ["export", "eval"])
def test_a_run_path_that_does_not_exist_is_named(tmp_path, capsys, command):
    missing = tmp_path / "runs" / "typo"
    assert main([command, str(missing)]) == 2
    err = capsys.readouterr().err
    assert f"{missing} does not exist" in err and "fix: " in err, err


def _leaf_parsers(parser, name="digitlab"):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield name, parser
    for action in subs:
        for child_name, child in action.choices.items():
            yield from _leaf_parsers(child, f"{name} {child_name}")


def test_every_command_help_has_a_description():
    from digitlab.cli import build_parser

    leaves = dict(_leaf_parsers(build_parser()))
    assert {"digitlab eval", "digitlab data show"} <= set(leaves)
    missing = sorted(name for name, parser in leaves.items() if not parser.description)
    assert not missing, f"--help without a description: {missing}"


def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback():
    # `digitlab predict *.png | head -1` closes the pipe while digitlab still writes; like other tools it must
    # stop quietly, not print a BrokenPipeError traceback.
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "digitlab", "train", "--list-models", "--list-presets"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child, still importing, writes anything
    stderr = proc.stderr.read().decode()
    proc.wait(timeout=60)
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr, stderr
