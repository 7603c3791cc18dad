"""Report layer: every figure is a real PNG, the HTML report is one offline file, writes are atomic."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.image import imread

from digitlab.errors import DigitlabError
from digitlab.io import write_json
from digitlab.report import figures as F
from digitlab.report.html import (
    embed_png,
    format_duration,
    format_metric,
    html_page,
    html_table,
    markdown_table,
    render_run_markdown,
    render_run_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)

HISTORY = [
    {"epoch": e, "train_loss": 0.5 / e, "train_acc": 0.85 + 0.03 * e, "val_loss": 0.4 / e,
     "val_acc": 0.9 + 0.02 * e, "val_per_class_acc": [0.9 + 0.005 * k for k in range(10)],
     "lr": 1e-3 / e, "seconds": 12.3 + e}
    for e in (1, 2, 3)
]
METRICS = {"test_acc": 0.99123, "test_loss": 0.0312, "best_epoch": 3, "val_acc": 0.96,
           "params": 123456, "train_seconds": 125.4, "test_per_class_acc": [0.99] * 10}
CONFIG = {"task": "recognize", "model": "digitnet", "epochs": 3, "lr": 0.001, "seed": 0,
          "data": {"batch_size": 64, "augment": False}}


def assert_png(path, min_w=150, min_h=80):
    """A real PNG that matplotlib reads back at a plausible size."""
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    image = imread(path)
    h, w = image.shape[:2]
    assert w >= min_w and h >= min_h, (w, h)
    return w, h


@pytest.fixture()
def run_dir(tmp_path):
    run = tmp_path / "run-2024-01-01"
    write_json(run / "config.json", CONFIG)
    write_json(run / "metrics.json", METRICS)
    write_json(run / "model.json", {"task": "recognize", "model": "digitnet",
                                    "model_args": {"width": 32, "dropout": 0.25}, "params": 123456})
    (run / "history.jsonl").write_text("".join(json.dumps(r) + "\n" for r in HISTORY))
    F.plot_curves_for_run(run)
    F.plot_confusion(RNG.integers(0, 50, (10, 10)), run / "figures" / "confusion_matrix.png")
    return run


# --------------------------------------------------------------------------- figures


def test_plot_history_panels_and_size(tmp_path):
    path = F.plot_history(HISTORY, tmp_path / "h.png", title="curves")
    assert path == tmp_path / "h.png"
    w, h = assert_png(path, 400, 250)
    assert w > h  # loss + accuracy side by side, lr panel below
    assert F.history_metrics(HISTORY) == ["loss", "acc"]  # lists, lr, seconds, epoch skipped


def test_plot_history_other_task_metrics(tmp_path):
    history = [{"epoch": e, "train_loss": 1 / e, "val_loss": 1.2 / e, "val_psnr": 20 + e, "val_ssim": 0.8,
                "val_score": 0.5, "val_kind_acc": 0.7} for e in (1, 2)]
    assert F.history_metrics(history) == ["loss", "psnr", "ssim", "score", "kind_acc"]
    assert_png(F.plot_history(history, tmp_path / "d.png"))


def test_plot_history_without_metrics_is_a_user_error(tmp_path):
    with pytest.raises(DigitlabError):
        F.plot_history([{"epoch": 1}], tmp_path / "x.png")
    assert not list(tmp_path.iterdir())


def test_classification_figures(tmp_path):
    assert_png(F.plot_confusion(RNG.integers(0, 100, (10, 10)), tmp_path / "c.png"), 300, 300)
    assert_png(F.plot_per_class(0.97 + 0.02 * RNG.random(10), tmp_path / "p.png"))
    assert_png(F.plot_roc([0, 0.1, 0.3, 1], [0, 0.7, 0.95, 1], 0.93, tmp_path / "r.png"))
    pts, labels = RNG.normal(size=(200, 2)), RNG.integers(0, 10, 200)
    assert_png(F.plot_embedding_2d(pts, labels, tmp_path / "e.png", "t-SNE"))


def test_confusion_with_empty_class_row(tmp_path):
    m = np.eye(3, dtype=int) * 5
    m[2, 2] = 0  # a class absent from the test set must not divide by zero
    assert_png(F.plot_confusion(m, tmp_path / "c.png", class_names=["a", "b", "c"]))


def test_image_figures(tmp_path):
    imgs = RNG.random((10, 28, 28)).astype(np.float32)
    titles = [f"true {i} / pred {(i + 1) % 10} (0.83)" for i in range(10)]
    colors = ["green" if i % 2 else "red" for i in range(10)]
    assert_png(F.plot_image_grid(imgs, tmp_path / "g.png", titles, colors, ncols=5, suptitle="wrong"))
    assert_png(F.plot_image_grid((imgs * 255).astype(np.uint8), tmp_path / "u.png", titles))
    rows = [("noisy", imgs[:6] + RNG.normal(0, 0.5, (6, 28, 28))), ("denoised", imgs[:6]), ("clean", imgs[:6])]
    assert_png(F.plot_image_rows(rows, tmp_path / "rows.png", col_titles=[str(i) for i in range(6)]))
    assert_png(F.plot_heatmap(RNG.random((28, 28)), tmp_path / "hm.png", "mean error", "|error|"))


def test_image_grid_empty_and_mismatched(tmp_path):
    assert_png(F.plot_image_grid(np.zeros((0, 28, 28)), tmp_path / "none.png", []), 100, 50)
    with pytest.raises(DigitlabError):
        F.plot_image_grid(np.zeros((2, 28, 28)), tmp_path / "bad.png", ["one"])


def test_overlaid_curves(tmp_path):
    series = {act: [{"epoch": e, "train_acc": 0.8 + 0.05 * e + d, "val_acc": 0.78 + 0.05 * e + d}
                    for e in (1, 2, 3)] for act, d in [("relu", 0.02), ("sigmoid", -0.05), ("tanh", 0.0)]}
    assert_png(F.plot_overlaid_curves(series, "acc", tmp_path / "o.png", title="activation"))
    with pytest.raises(DigitlabError):
        F.plot_overlaid_curves(series, "psnr", tmp_path / "none.png")


def test_failed_savefig_leaves_no_file(tmp_path, monkeypatch):
    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        F.plot_per_class([0.9, 0.95], tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temp file


def test_read_history_drops_torn_last_line(tmp_path):
    (tmp_path / "history.jsonl").write_text(json.dumps(HISTORY[0]) + '\n{"epoch": 2, "tra')
    assert F.read_history(tmp_path) == [HISTORY[0]]


def test_zoomed_ylim_for_accuracies_near_one():
    bottom, top = F._zoomed_ylim(np.array([97.0, 98.5, 99.8]), cap=100.0)
    assert 90 < bottom < 97 and 99.8 < top < 101
    assert F._zoomed_ylim(np.array([0.1, 0.9]), cap=None)[0] == 0.0


# --------------------------------------------------------------------------- html / markdown


def test_run_report_is_self_contained(run_dir):
    out = render_run_report(run_dir)
    assert out == run_dir / "report.html"
    text = out.read_text(encoding="utf-8")
    assert "recognize" in text and "digitnet" in text and run_dir.name in text
    assert "99.12%" in text and "96.00%" in text  # accuracies in percent, 2 decimals
    assert "123,456" in text  # params with thousands separators
    assert "2 min 05 s" in text  # train_seconds as a duration
    assert "<td>data.batch_size</td><td>64</td>" in text and "<td>false</td>" in text  # flattened, as written
    assert text.index("Curves") < text.index("Confusion matrix")  # training curves lead the figures
    assert text.count("data:image/png;base64,") == len(list((run_dir / "figures").glob("*.png"))) == 2
    assert "Confusion matrix" in text and "Curves" in text  # captions from file names
    for bad in ("http://", "https://", 'src="//', "<link", "@import", "url("):
        assert bad not in text
    assert re.search(r"<tr><td class=\"num\">3</td>", text)  # epoch column comes first


def test_run_report_custom_out_and_unfinished_run(run_dir, tmp_path):
    (run_dir / "metrics.json").unlink()
    out = render_run_report(run_dir, tmp_path / "elsewhere" / "r.html")
    assert "not finished" in out.read_text(encoding="utf-8")


def test_run_report_rejects_non_run(tmp_path):
    with pytest.raises(DigitlabError):
        render_run_report(tmp_path / "missing")
    with pytest.raises(DigitlabError):
        render_run_report(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_figure_leaves_no_report(run_dir):
    (run_dir / "figures" / "zz_broken.png").write_bytes(b"not a png")
    with pytest.raises(DigitlabError):
        render_run_report(run_dir)
    assert not (run_dir / "report.html").exists()


def test_html_table_escapes_and_formats():
    table = html_table([{"name": "<script>alert(1)</script>", "val_acc": 0.5, "n": 1234}],
                       formats={"n": "{:,}"})
    assert "<script>" not in table and "&lt;script&gt;" in table
    assert "50.00%" in table and "1,234" in table
    page = html_page("a <b> title", table)
    assert "<title>a &lt;b&gt; title</title>" in page and page.startswith("<!DOCTYPE html>")


def test_embed_png_rejects_non_png(tmp_path):
    F.plot_roc([0, 1], [0, 1], 0.5, tmp_path / "ok.png")
    assert embed_png(tmp_path / "ok.png", 'a "quoted" alt').startswith('<img src="data:image/png;base64,')
    (tmp_path / "bad.png").write_text("hello")
    with pytest.raises(DigitlabError):
        embed_png(tmp_path / "bad.png", "bad")


def test_markdown_table_rows():
    rows = [{"a": 1, "b": "x|y"}, {"a": 2}, {"a": 3, "c": 0.25}]
    lines = markdown_table(rows).splitlines()
    assert len(lines) == 2 + len(rows)
    assert lines[0] == "| a | b | c |"
    assert all(line.count(" | ") == 2 for line in lines[2:])  # the pipe in 'x|y' is escaped
    assert "x\\|y" in lines[2]


def test_run_markdown_links_figures(run_dir):
    out = render_run_markdown(run_dir)
    text = out.read_text(encoding="utf-8")
    assert out == run_dir / "report.md"
    assert "](figures/confusion_matrix.png)" in text and "](figures/curves.png)" in text
    assert "99.12%" in text


def test_format_helpers():
    assert format_metric("test_acc", 0.99123) == "99.12%"
    assert format_metric("params", 1234567) == "1,234,567"
    assert format_metric("val_psnr", 27.456) == "27.46 dB"
    assert format_duration(45.21) == "45.2 s"
    assert format_duration(3725) == "1 h 02 min"
    assert format_metric("x", None) == "—"
    assert format_metric("seconds", 12) == "12.0 s"
    assert format_metric("train_loss", 0.5) == "0.5000"
    assert format_metric("val_mse", 1.5e-5) == "1.500e-05"


def test_pages_are_written_compact():
    from digitlab.report.html import html_page, html_table

    page = html_page("t", html_table([{"a": 1, "b": 2}, {"a": 3, "b": 4}]))
    assert "\n<" not in page and "<td" in page and page.endswith("</html>\n")
    style = page[page.index("<style>"):page.index("</style>")]
    assert "\n" not in style and "font-family" in style
