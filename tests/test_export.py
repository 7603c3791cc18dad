"""ONNX export: the graph has the documented names and dynamic batch, matches PyTorch on real test
images, and `serve --runtime onnx` answers like the PyTorch runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from digitlab.cli import main
from digitlab.errors import DigitlabError
from digitlab.api import Recognizer
from digitlab.models import registry
from helpers import untrained_run

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def make_run(root: Path, task: str = "recognize", model: str = "digitnet", model_args=None) -> Path:
    return untrained_run(root / task / "r", task, model, model_args, metrics={"test_acc": 0.1})


@pytest.fixture
def rec_run(tmp_path, mnist_dir, monkeypatch) -> Path:
    monkeypatch.setenv("DIGITLAB_DATA", str(mnist_dir))
    return make_run(tmp_path, model_args={"widths": [4, 8, 8]})


def test_export_command_writes_checked_model(rec_run, capsys):
    assert main(["export", str(rec_run), "--format", "onnx"]) == 0
    out = capsys.readouterr().out
    assert "max abs difference logits" in out and "1000 real test images" in out
    diff = float(out.split("logits ")[1].split()[0].rstrip(","))
    assert diff < 1e-3
    path = rec_run / "model.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [1, 28, 28]  # dynamic batch


def test_onnx_matches_torch_for_several_batch_sizes(rec_run):
    from digitlab.export import onnx_session

    session = onnx_session(rec_run)  # exports on first use
    assert (rec_run / "model.onnx").is_file()
    model = Recognizer(rec_run).model
    for b in (1, 7, 64):
        x = torch.rand(b, 1, 28, 28, generator=torch.Generator().manual_seed(b))
        (got,) = session.run(None, {"image": x.numpy()})
        with torch.inference_mode():
            want = model(x).numpy()
        assert got.shape == (b, 10) and np.abs(got - want).max() < 1e-4


def test_serve_onnx_runtime_answers_like_torch(rec_run):
    from fastapi.testclient import TestClient

    from digitlab.serve.app import create_app

    g = np.zeros((28, 28))
    g[5:23, 13:15] = 1
    answers = {}
    for runtime in ("torch", "onnx"):
        app = create_app(recognize=rec_run, runtime=runtime, runs_root=rec_run.parent.parent / "none")
        with TestClient(app, base_url="http://localhost") as c:
            assert c.get("/api/models").json()["models"][0]["runtime"] == runtime
            answers[runtime] = c.post("/api/recognize/pixels", json={"pixels": g.tolist()}).json()["probabilities"]
    assert np.allclose(answers["torch"], answers["onnx"], atol=1e-5)


def test_export_refuses_a_non_run(tmp_path):
    with pytest.raises(DigitlabError, match="not a digitlab run"):
        from digitlab.export import export_onnx

        export_onnx(tmp_path)


@pytest.mark.parametrize("task", ["denoise", "compare"])
def test_denoise_and_compare_export_and_serve(task, tmp_path, mnist_dir, monkeypatch):
    """The other tasks' first registered model exports, checks, and serves under both runtimes."""
    from fastapi.testclient import TestClient

    from digitlab.export import IO_NAMES, export_onnx
    from digitlab.serve.app import create_app

    models = registry.list_models(task)
    if not models:
        pytest.skip(f"no {task} model registered yet")
    monkeypatch.setenv("DIGITLAB_DATA", str(mnist_dir))
    run = make_run(tmp_path, task, sorted(models)[0])
    graph = onnx.load(str(export_onnx(run))).graph
    assert [i.name for i in graph.input] == IO_NAMES[task][0] and [o.name for o in graph.output] == IO_NAMES[task][1]
    g = np.zeros((28, 28))
    g[5:23, 13:15] = 1
    answers = {}
    for runtime in ("torch", "onnx"):
        with TestClient(create_app(**{task: run}, runtime=runtime, runs_root=tmp_path / "none"),
                        base_url="http://localhost") as c:
            if task == "denoise":
                r = c.post("/api/denoise/pixels", json={"pixels": g.tolist(), "noise": "gaussian", "strength": 0.7})
                assert r.status_code == 200, r.text
                answers[runtime] = r.json()["denoised"]
            else:
                r = c.post("/api/compare/pixels", json={"a": g.tolist(), "b": g.T.tolist()})
                assert r.status_code == 200, r.text
                answers[runtime] = [r.json()["same_probability"]]
    assert np.allclose(answers["torch"], answers["onnx"], atol=2e-3)
