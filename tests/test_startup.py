"""Instant start and the lean install: what a fresh process imports, and the extras' errors."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest

import digitlab
from digitlab.bench.startup import loaded_modules, measured_env
from digitlab.cli import main
from digitlab.errors import DigitlabError
from digitlab.extras import EXTRAS, require

ROOT = Path(__file__).resolve().parents[1]
# Libraries that cost a good part of a second each: none of them may load to show help.
HEAVY = {"torch", "numpy", "PIL", "matplotlib", "torchmetrics", "scipy", "skimage", "optuna", "sqlalchemy",
         "fastapi", "uvicorn", "onnx", "onnxruntime", "tensorboard", "safetensors"}


def _modules(args: list[str], tmp_path: Path) -> set[str]:
    """Top-level modules a fresh process of this checkout holds after `digitlab ARGS` (or -c CODE)."""
    return set(loaded_modules(args, measured_env(ROOT), cwd=tmp_path))


def test_import_digitlab_does_not_import_torch(tmp_path):
    assert "torch" not in _modules(["-c", "import digitlab"], tmp_path)


@pytest.mark.parametrize("args", [["--help"], ["predict", "--help"], ["bench", "denoise", "--help"]])
def test_help_imports_no_heavy_library(args, tmp_path):
    # every command registers its parser for any `--help`, so this covers all of them
    loaded = _modules(args, tmp_path)
    assert {"digitlab", "argparse"} <= loaded  # the probe really ran the CLI
    assert not loaded & HEAVY, f"`digitlab {' '.join(args)}` imported {sorted(loaded & HEAVY)}"


def test_load_and_train_come_lazily_from_the_api_module(monkeypatch):
    api = types.ModuleType("digitlab.api")
    api.load, api.train = object(), object()
    monkeypatch.setitem(sys.modules, "digitlab.api", api)
    assert digitlab.load is api.load and digitlab.train is api.train
    assert {"load", "train"} <= set(dir(digitlab))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        digitlab.nope  # noqa: B018


def test_require_names_the_extra_and_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "fastapi", None)  # as if not installed: find_spec answers None
    with pytest.raises(DigitlabError) as err:
        require("serve", "`digitlab serve`")
    assert err.value.problem == "`digitlab serve` needs the serve extra (fastapi is not installed)"
    assert err.value.fix == "pip install 'digitlab[serve]'"


@pytest.mark.parametrize("module, args, message", [
    ("fastapi", ["serve"], "`digitlab serve` needs the serve extra (fastapi is not installed)"),
    ("onnx", ["serve", "--runtime", "onnx"], "`digitlab serve --runtime onnx` needs the export extra"),
    ("onnx", ["export", "runs/x"], "`digitlab export` needs the export extra (onnx is not installed)"),
    ("optuna", ["study", "configs/studies/r2-optimizer.yaml"], "`digitlab study` needs the study extra"),
    ("optuna", ["tune", "--space", "x.yaml"], "`digitlab tune` needs the study extra (optuna is not installed)"),
    ("skimage", ["bench", "denoise", "--method", "tv"], "--method tv` needs the baselines extra"),
])
def test_commands_say_which_extra_they_need(module, args, message, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.chdir(ROOT)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "pip install 'digitlab[" in err


def test_extras_match_pyproject():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]

    def names(requirements):  # a platform-specific package (with a ";" marker) is optional: not required
        return {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower() for r in requirements if ";" not in r}

    for extra, packages in EXTRAS.items():
        assert names(optional[extra]) == {dist for _, dist in packages}, extra
    assert optional["all"] == [f"digitlab[{','.join(EXTRAS)}]"]
    core = names(project["dependencies"])
    assert not core & {dist for packages in EXTRAS.values() for _, dist in packages}


def test_training_without_tensorboard_says_what_it_skips(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    run = tmp_path / "run"
    assert main(["train", "recognize", "--preset", "recognize-smoke",
                 "--set", "epochs=1", "figures=false", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "tensorboard is not installed, so no TensorBoard logs are written" in out
    assert (run / "model.safetensors").is_file() and not (run / "tb").exists()


@pytest.mark.slow
def test_bench_startup_records_every_case(tmp_path):
    out = tmp_path / "startup.json"
    assert main(["bench", "startup", "-n", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    r = record["results"]
    assert record["benchmark"] == "startup" and record["source"] == str(ROOT)
    for case in ("python", "torch", "import", "help"):
        assert len(r[case]["seconds"]) == 1 and r[case]["median_s"] > 0
    assert r["torch"]["torch_imported"] and not r["help"]["torch_imported"] and not r["import"]["torch_imported"]
    assert record["targets"]["help"]["target_s"] == 0.5
    # without --run the predict case uses the shipped model, or says why it was skipped
    assert "median_s" in r["predict"] or r["predict"]["skipped"].startswith("skipped: no --run")


def test_bench_startup_rejects_a_source_without_digitlab(tmp_path, capsys):
    assert main(["bench", "startup", "--source", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2
    assert "holds no digitlab package" in capsys.readouterr().err
