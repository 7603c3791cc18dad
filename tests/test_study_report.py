"""Study reports: the conclusion and verdict against a claim, the stated scale, the denoising extras
(PSNR/SSIM, gradient norms, error maps), and the published studies under docs/studies/."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from digitlab import io
from digitlab.errors import DigitlabError
from digitlab.study import report, spec as specs

ROOT = Path(__file__).resolve().parents[1]


def _row(setting, mean, std, runs=3):
    return {"setting": setting, "runs": runs, "planned": runs, "val_best_mean": mean, "val_best_std": std}


CLAIM = {"source": "R9", "text": "A beats B", "best": "A"}


@pytest.mark.parametrize("rows, verdict", [
    ([_row("A", 0.99, 0.001), _row("B", 0.95, 0.002)], "agrees"),
    ([_row("A", 0.99, 0.010), _row("B", 0.98, 0.010)], "agrees (not decided)"),
    ([_row("B", 0.99, 0.001), _row("A", 0.95, 0.002)], "disagrees"),
    ([_row("B", 0.99, 0.010), _row("A", 0.98, 0.010)], "not decided"),
    ([_row("B", 0.99, 0.0, runs=1), _row("A", 0.95, 0.0, runs=1)], "not decided"),   # one seed decides nothing
    ([_row("A", 0.99, 0.0, runs=1), _row("B", 0.95, 0.0, runs=1)], "agrees (not decided)"),
    ([_row("A", None, None), _row("B", None, None)], "no result"),
])
def test_verdict_follows_the_numbers_and_the_seed_spread(rows, verdict):
    sentence, got = report.conclude(rows, "acc", "max", CLAIM)
    assert got == verdict
    assert sentence.endswith(".")


def test_conclusion_names_winner_and_gap_and_says_when_there_is_no_claim():
    rows = [_row("B", 0.95, 0.002), _row("A", 0.99, 0.001)]
    sentence, verdict = report.conclude(rows, "acc", "max", {"source": "R9", "text": "nothing here"})
    assert verdict == "no claim" and "**A**" in sentence and "4.00 points ahead of **B**" in sentence
    # lower is better: the smaller value wins
    assert report.conclude(rows, "loss", "min", CLAIM)[1] == "disagrees"


def _spec(**extra):
    return specs.from_dict({"task": "recognize", "base": {"epochs": 30}, "grid": {"lr": [0.1, 0.01]},
                            "seeds": [0, 1, 2], **extra})


def test_scale_note_lists_what_the_run_changed_against_the_file():
    spec = _spec()
    assert report.scale_note(spec, spec.trials()).startswith("Full scale")
    ran = spec.trials({"epochs": 2, "subset": 0.1, "threads": 1, "task_args": {"junk_size": 10}})
    note = report.scale_note(spec, ran)
    assert "epochs 2 (file: 30)" in note and "subset 0.1 (file: 1)" in note
    assert "task_args.junk_size 10 (file: —)" in note and "threads" not in note
    spec.seeds = [0]  # the run used fewer seeds than the file plans
    fewer = spec.trials()
    assert "seeds [0] (file: [0, 1, 2])" in report.scale_note(_spec(), fewer)


def test_claim_must_name_a_setting():
    assert _spec(claim={"source": "R2", "text": "0.01 wins", "best": "lr=0.01"}).claim["best"] == "lr=0.01"
    with pytest.raises(DigitlabError, match="not a setting"):
        _spec(claim={"source": "R2", "text": "x", "best": "lr=0.5"})
    with pytest.raises(DigitlabError, match="claim"):
        _spec(claim={"text": "x", "winner": "lr=0.1"})


def _fake_denoise_run(path: Path, composite: float, seed: int, hot: tuple[int, int]) -> Path:
    """A finished denoise run folder as the loop writes it (no training needed)."""
    io.write_json(path / "config.json", {"task": "denoise", "model": "unet_r1", "seed": seed, "epochs": 2})
    io.write_json(path / "metrics.json", {"val_composite": composite, "test_composite": composite - 1,
                                          "test_psnr": composite / 2, "test_ssim": 0.9, "params": 1000,
                                          "seconds_per_epoch": 1.0, "peak_rss_mb": 500.0})
    (path / "history.jsonl").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0 / e, "val_loss": 1.0 / e,
                                                             "val_composite": composite}) + "\n" for e in (1, 2)))
    errors = np.zeros((28, 28))
    errors[hot] = 0.5
    io.write_json(path / "error_map.json", {"n": 10, "mean_abs_error": errors.tolist()})
    io.write_json(path / "grad_norms.json", {"layers": ["down.0", "out"],
                                             "epochs": [{"down.0": 1.0, "out": 2.0}, {"down.0": 0.5, "out": 1.0 + seed}]})
    return path


def test_denoise_report_shows_psnr_ssim_gradient_norms_error_maps_and_verdict(tmp_path):
    groups = [("concat", [report.Run(_fake_denoise_run(tmp_path / f"c{s}", 60 + s, s, (0, 0))) for s in (0, 1)]),
              ("none", [report.Run(_fake_denoise_run(tmp_path / f"n{s}", 40 + s, s, (14, 14))) for s in (0, 1)])]
    claim = {"source": "R1", "text": "concat beats none", "best": "concat"}
    page = report.render(groups, tmp_path / "out", "Study skip", "composite", "max", notes=["Reduced scale: x"],
                         claim=claim)
    summary = io.read_json(tmp_path / "out" / "summary.json")
    assert summary["verdict"] == "agrees" and summary["claim"] == claim
    concat = summary["rows"][0]
    assert concat["test_psnr_mean"] == pytest.approx(30.25) and concat["test_ssim_mean"] == pytest.approx(0.9)
    assert concat["grad_norms_last_epoch"] == {"down.0": 0.5, "out": 1.5}   # last epoch, mean over seeds
    assert np.asarray(concat["error_map"])[0, 0] == 0.5 and np.asarray(summary["rows"][1]["error_map"])[14, 14] == 0.5
    for name in ("grad_norms.png", "error_maps.png"):
        assert (tmp_path / "out" / "figures" / name).is_file()
    html, md = page.read_text(), (tmp_path / "out" / "report.md").read_text()
    assert "Verdict: agrees." in html and "Reduced scale: x" in html and "test PSNR" in html
    assert "## Conclusion" in md and "Claim (R1): concat beats none" in md
    assert html.count("data:image/png;base64") >= 4   # curves, gradient norms, error maps embedded


def test_restate_adds_the_conclusion_to_a_report_whose_runs_are_gone(tmp_path):
    groups = [(name, [report.Run(_fake_denoise_run(tmp_path / name, value, 0, (0, 0)))])
              for name, value in (("a", 50.0), ("b", 40.0))]
    report.render(groups, tmp_path / "out", "Study x", "composite", "max")
    claim = {"source": "R1", "text": "b beats a", "best": "b"}
    assert report.restate(tmp_path / "out", claim) == "not decided"   # one seed
    assert report.restate(tmp_path / "out", claim) == "not decided"   # twice: replaced, not repeated
    md = (tmp_path / "out" / "report.md").read_text()
    assert md.count("## Conclusion") == 1 and "Claim (R1): b beats a" in md and md.index("## Conclusion") < md.index("## Summary")
    assert (tmp_path / "out" / "report.html").read_text().count("<h2>Conclusion</h2>") == 1
    assert io.read_json(tmp_path / "out" / "summary.json")["claim"] == claim


# --------------------------------------------------------------------------- the published record


def test_every_study_file_is_published_with_its_report_summary_and_verdict():
    files = sorted(p.stem for p in (ROOT / "configs" / "studies").glob("*.yaml"))
    published = sorted(p.parent.name for p in (ROOT / "docs" / "studies").glob("*/report.html"))
    assert published == files   # the bar: as many published reports as study files, name for name
    index = (ROOT / "docs" / "studies" / "README.md").read_text()
    record = (ROOT / "docs" / "reproduction.md").read_text()
    for name in files:
        folder = ROOT / "docs" / "studies" / name
        summary = io.read_json(folder / "summary.json")
        assert summary.get("verdict") and summary.get("conclusion"), name
        assert (folder / "report.md").is_file() and f"{name}/report.md" in index and name in record, name
        assert not (folder / "runs").exists() and not (folder / "optuna.db").exists(), name


def test_per_class_figure_lays_out_a_tuning_reports_long_labels(tmp_path):
    """`digitlab tune` names every tuned value in a setting; 8 such labels in the axes were wider than
    the figure and matplotlib warned "constrained_layout not applied" to the user."""
    import warnings

    from digitlab.study import report

    labels = [f"#{i} lr=0.00{i}34, widths=[8, 16, 32], dropout=0.{i}5, batch_size=128" for i in range(8)]
    rows = [{"setting": label, "per_class": [0.95 + 0.004 * c for c in range(10)]} for label in labels]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert report._per_class_figure(rows, tmp_path / "per_class.png").is_file()
