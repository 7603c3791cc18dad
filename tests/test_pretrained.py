"""The shipped models: present, within the size budget, the bytes recorded, the figures recorded,
and usable with no run folder from the CLI and the Python API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw

import digitlab
from digitlab import pretrained
from digitlab.pretrained import build

RECORDS = Path(__file__).resolve().parents[1] / "benchmarks"
MAX_BYTES = 10 * 2**20  # all shipped files together


def record(task: str) -> dict:
    return json.loads((RECORDS / f"pretrained-{task}.json").read_text())


@pytest.mark.parametrize("task", pretrained.TASKS)
def test_shipped_bytes_are_the_recorded_ones(task):
    folder = pretrained.path(task)
    assert build.sha256(folder / "model.safetensors") == record(task)["sha256"]
    assert (folder / "MODEL_CARD.md").read_text().count(record(task)["sha256"]) == 1


def test_shipped_models_fit_the_size_budget():
    total = sum(p.stat().st_size for p in pretrained.ROOT.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    assert total <= MAX_BYTES, f"{total:,} bytes shipped"


@pytest.mark.slow
@pytest.mark.parametrize("task", pretrained.TASKS)
def test_shipped_model_gives_its_recorded_figures(task, mnist_dir):
    want = record(task)["slice"]
    got = build.measure(pretrained.path(task), mnist_dir)
    for key, value in got.items():
        assert value == pytest.approx(want[key], abs=2e-3 if key in ("psnr",) else 1e-3), key


def test_api_loads_the_shipped_models():
    for task, cls in (("recognize", digitlab.Recognizer), ("denoise", digitlab.Denoiser),
                      ("compare", digitlab.Comparer)):
        model = digitlab.load(task)
        assert type(model) is cls and model.shipped and "shipped" in repr(model)


def _one(folder: Path) -> Path:
    img = Image.new("L", (140, 140), 255)
    ImageDraw.Draw(img).line([(70, 20), (70, 120)], fill=0, width=12)  # a plain "1"
    img.save(folder / "one.png")
    return folder / "one.png"


def test_cli_predicts_with_the_shipped_model(tmp_path):
    out = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(_one(tmp_path)), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    answer = json.loads(out.stdout)
    assert answer["digit"] == 1 and answer["abstain"] is None, answer


def test_serve_answers_every_task_with_no_run_given(tmp_path):
    fastapi_testclient = pytest.importorskip("fastapi.testclient")
    from digitlab.serve.app import create_app

    with fastapi_testclient.TestClient(create_app(runs_root=tmp_path), base_url="http://localhost") as client:
        health = client.get("/healthz").json()
        assert health["tasks"] == ["compare", "denoise", "recognize"]
        one = [[0.0] * 28 for _ in range(28)]
        for row in one[6:22]:
            row[13] = row[14] = 1.0
        assert client.post("/api/recognize/pixels", json={"pixels": one}).json()["digit"] == 1
        assert client.post("/api/denoise/pixels", json={"pixels": one, "noise": "gaussian"}).status_code == 200
        assert client.post("/api/compare/pixels", json={"a": one, "b": one}).json()["same_probability"] > 0.5


def test_shipped_onnx_is_the_recorded_one_and_agrees_with_torch():
    rec = record("recognize")
    folder = pretrained.path("recognize")
    assert build.sha256(folder / "model.onnx") == rec["onnx_sha256"]
    from digitlab import lite

    images = torch.rand(16, 28, 28, generator=torch.Generator().manual_seed(0))
    want = digitlab.load("recognize").logits(images)
    got = lite.LiteRecognizer(folder).logits(images.numpy())
    assert abs(got - want).max() < 1e-3


def test_cli_predict_with_the_shipped_model_does_not_import_torch(tmp_path):
    from digitlab.bench.startup import loaded_modules, write_digit_png

    image = write_digit_png(tmp_path / "seven.png")
    modules = loaded_modules(["predict", str(image)], cwd=tmp_path)
    assert "onnxruntime" in modules and "torch" not in modules


def test_a_stale_onnx_in_a_run_is_not_used(tmp_path):
    import os
    import shutil

    from digitlab import lite

    run = Path(shutil.copytree(pretrained.path("recognize"), tmp_path / "run"))
    os.utime(run / "model.onnx")  # exported after the weights; the checkout's file order gives either mtime
    assert lite.available(run)
    os.utime(run / "model.onnx", (0, 0))  # older than the weights: training rewrote them since the export
    assert not lite.available(run)
    out = subprocess.run([sys.executable, "-m", "digitlab", "predict", str(run), str(_one(tmp_path)), "--json"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and json.loads(out.stdout)["digit"] == 1, out.stderr


def test_the_card_names_each_members_preset_and_seed():
    cfg = {"epochs": 12, "batch_size": 128, "optimizer": "adamw", "lr": 0.003, "schedule": "onecycle", "seed": 0}
    mixed = build._recipe({"config": cfg, "member_seeds": [0, 1, 2, 0],
                           "preset": ["recognize-robust"] * 3 + ["recognize-robust-deep"]})
    assert "members `recognize-robust` seeds 0, 1, 2 + `recognize-robust-deep` seed 0" in mixed
    one = build._recipe({"config": cfg, "member_seeds": [0, 1, 2], "preset": "recognize-robust"})
    assert one.startswith("preset `recognize-robust`") and "seeds 0, 1, 2: one run per seed" in one
    assert "seed 0)" in build._recipe({"config": cfg, "preset": "denoise-fast"})


def test_packing_with_the_wrong_number_of_member_presets_is_refused_before_copying(capsys):
    before = build.sha256(pretrained.path("recognize") / "model.safetensors")
    members = len(json.loads((pretrained.path("recognize") / "model.json").read_text())["members"])
    assert build.main([str(pretrained.path("recognize")), "--preset", "recognize-robust", "recognize-robust-deep"]) == 2
    assert f"2 presets for {members} ensemble members" in capsys.readouterr().err
    assert build.sha256(pretrained.path("recognize") / "model.safetensors") == before
