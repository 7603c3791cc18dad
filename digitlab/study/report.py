"""Comparison reports: one self-contained HTML file (figures embedded) plus Markdown, for a study
folder or any set of run directories grouped into settings.

Shows what the source reports drew (train and validation curves per setting, overlaid), a summary
table (best and final validation metric, test metric as mean +- std over seeds, parameters, FLOPs,
seconds per epoch, peak memory), per-class test accuracy, and one paragraph saying what won.
A study report also states the scale it ran at against its study file (a reduced run says so in
its header), a one-sentence conclusion computed from the numbers, and whether that agrees with the
source report's claim (the study file's `claim:`). Denoising studies add test PSNR and SSIM, the
per-layer gradient norms and the error heat map per setting (what R1 showed beside its scores).
"""

from __future__ import annotations

import html as htmlmod
import math
import statistics
import textwrap
from pathlib import Path
from typing import Sequence

import numpy as np

from digitlab import __version__, io
from digitlab.errors import DigitlabError
from digitlab.report import figures
from digitlab.report.html import embed_png, html_page, html_table, markdown_table

PRIMARY = {"recognize": ("acc", "max"), "denoise": ("composite", "max"), "compare": ("acc", "max")}
EXTRA_TEST = {"denoise": ("psnr", "ssim"), "compare": ("auc",)}   # shown beside the primary metric
# Settings that only change how a trial runs, not what it measures: not part of a study's scale.
RUN_ONLY = {"seed", "threads", "figures", "progress", "tensorboard", "device", "data_dir"}


class Run:
    """One finished (or unfinished) run directory, read once."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.config = _json(self.path / "config.json")
        self.metrics = _json(self.path / "metrics.json")
        try:
            self.history = figures.read_history(self.path)
        except DigitlabError:
            self.history = []
        self.grad_norms = _json(self.path / "grad_norms.json")   # denoise runs (digitlab/engine/grad_norms.py)
        self.error_map = _json(self.path / "error_map.json")

    @property
    def finished(self) -> bool:
        return bool(self.metrics)


def _json(path: Path) -> dict:
    try:
        data = io.read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


# --------------------------------------------------------------------------- numbers


def _num(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _stats(values: Sequence) -> tuple[float | None, float | None]:
    vals = [v for v in (_num(x) for x in values) if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def _is_pct(metric: str) -> bool:
    return figures.is_accuracy(metric)


def fmt_stat(metric: str, mean: float | None, std: float | None, n: int) -> str:
    """'99.08% +- 0.05' for accuracies (std in points), '31.2 +- 0.3' otherwise; no +- for one seed."""
    if mean is None:
        return "—"
    scale, unit = (100.0, "%") if _is_pct(metric) else (1.0, "")
    text = f"{mean * scale:.2f}{unit}" if unit else f"{mean:.4g}"
    if n > 1 and std is not None:
        text += f" ± {std * scale:.2f}" if unit else f" ± {std:.2g}"
    return text


def _mean_history(histories: list[list[dict]]) -> list[dict]:
    """Epoch-wise mean of numeric fields over seeds (epochs that every seed reached)."""
    histories = [h for h in histories if h]
    if not histories:
        return []
    n = min(len(h) for h in histories)
    out = []
    for e in range(n):
        rows = [h[e] for h in histories]
        keys = [k for k, v in rows[0].items() if _num(v) is not None]
        out.append({k: statistics.fmean(_num(r.get(k)) or 0.0 for r in rows) for k in keys})
    return out


# --------------------------------------------------------------------------- grouping


def summarize(groups: list[tuple[str, list[Run]]], metric: str) -> list[dict]:
    """One row per setting: the numbers the summary table shows, raw (for summary.json and tests)."""
    rows = []
    for label, runs in groups:
        done = [r for r in runs if r.finished]
        finals = [r.history[-1].get(f"val_{metric}") for r in done if r.history]
        row = {"setting": label, "runs": len(done), "planned": len(runs)}
        for name, values in (("val_best", [r.metrics.get(f"val_{metric}") for r in done]),
                             ("val_final", finals),
                             ("test", [r.metrics.get(f"test_{metric}") for r in done])):
            row[f"{name}_mean"], row[f"{name}_std"] = _stats(values)
        for name in dict.fromkeys(k for r in done for k in EXTRA_TEST.get(r.config.get("task"), ())):
            row[f"test_{name}_mean"], row[f"test_{name}_std"] = _stats([r.metrics.get(f"test_{name}") for r in done])
        for key in ("params", "flops_per_image", "seconds_per_epoch", "peak_rss_mb", "peak_cuda_mb", "epochs_run"):
            row[key] = _stats([r.metrics.get(key) for r in done])[0]
        row["grad_norms_last_epoch"] = _mean_dicts([r.grad_norms["epochs"][-1] for r in done
                                                    if r.grad_norms.get("epochs")])
        maps = [r.error_map["mean_abs_error"] for r in done if r.error_map.get("mean_abs_error")]
        row["error_map"] = np.round(np.mean(np.asarray(maps, dtype=float), axis=0), 5).tolist() if maps else None
        per_class = [r.metrics.get("test_per_class_acc") for r in done
                     if isinstance(r.metrics.get("test_per_class_acc"), list)]
        row["per_class"] = np.mean(np.asarray(per_class, dtype=float), axis=0).tolist() if per_class else None
        rows.append(row)
    return rows


def _mean_dicts(dicts: list[dict]) -> dict | None:
    """Key-wise mean over seeds (keys in first-seen order; a key averages the seeds that have it)."""
    keys = list(dict.fromkeys(k for d in dicts for k in d))
    return {k: statistics.fmean(d[k] for d in dicts if k in d) for k in keys} or None


def _extra_metrics(rows: list[dict]) -> list[str]:
    return sorted({k[len("test_"):-len("_mean")] for r in rows for k in r
                   if k.startswith("test_") and k.endswith("_mean") and k != "test_mean"})


def _table_rows(rows: list[dict], metric: str) -> list[dict]:
    out = []
    extras = _extra_metrics(rows)
    for r in rows:
        n = r["runs"]
        out.append({
            "setting": r["setting"],
            "runs": f"{n}/{r['planned']}" if n != r["planned"] else n,
            f"best val {metric}": fmt_stat(metric, r["val_best_mean"], r["val_best_std"], n),
            f"final val {metric}": fmt_stat(metric, r["val_final_mean"], r["val_final_std"], n),
            f"test {metric}": fmt_stat(metric, r["test_mean"], r["test_std"], n),
            **{f"test {figures.pretty_metric(e)}": fmt_stat(e, r.get(f"test_{e}_mean"), r.get(f"test_{e}_std"), n)
               for e in extras},
            "params": f"{int(r['params']):,}" if r["params"] is not None else "—",
            "MFLOPs/image": f"{r['flops_per_image'] / 1e6:.2f}" if r["flops_per_image"] else "—",
            "s/epoch": f"{r['seconds_per_epoch']:.2f}" if r["seconds_per_epoch"] is not None else "—",
            "peak memory (MB)": _memory(r),
        })
    return out


def _memory(r: dict) -> str:
    if r.get("peak_cuda_mb") is not None:
        return f"{r['peak_cuda_mb']:.0f} (GPU)"
    return f"{r['peak_rss_mb']:.0f}" if r.get("peak_rss_mb") is not None else "—"


def auto_summary(rows: list[dict], metric: str, mode: str) -> str:
    """One paragraph: the winner on validation, its margin, whether seeds separate it, test and cost."""
    ranked = [r for r in rows if r["val_best_mean"] is not None]
    if not ranked:
        return "No trial has finished yet, so there is nothing to compare."
    sign = 1.0 if mode == "max" else -1.0
    ranked.sort(key=lambda r: -sign * r["val_best_mean"])
    best = ranked[0]
    pct = _is_pct(metric)
    unit, scale = (" points", 100.0) if pct else ("", 1.0)

    def show(r, key):
        return fmt_stat(metric, r[f"{key}_mean"], r[f"{key}_std"], r["runs"])

    seeds_note = f" (mean ± std over {best['runs']} seeds)" if best["runs"] > 1 else ""
    text = (f"Selected on validation {metric} ({'higher' if mode == 'max' else 'lower'} is better), "
            f"**{best['setting']}** won with {show(best, 'val_best')}"
            f"{seeds_note}; "
            f"its test {metric} is {show(best, 'test')}.")
    if len(ranked) > 1:
        second, worst = ranked[1], ranked[-1]
        gap = abs(best["val_best_mean"] - second["val_best_mean"]) * scale
        spread = max(best["val_best_std"] or 0.0, second["val_best_std"] or 0.0) * scale
        text += (f" The runner-up, **{second['setting']}**, is {gap:.2f}{unit} behind ({show(second, 'val_best')})")
        if len(ranked) > 2:
            far = abs(best["val_best_mean"] - worst["val_best_mean"]) * scale
            text += f", and the last, **{worst['setting']}**, {far:.2f}{unit} behind ({show(worst, 'val_best')})"
        text += "."
        if min(best["runs"], second["runs"]) > 1:
            text += (" The margin over the runner-up is larger than the seed-to-seed spread "
                     f"({spread:.2f}{unit} std), so the ranking is clear." if gap > 2 * spread else
                     " The margin over the runner-up is within about two seed standard deviations "
                     f"({spread:.2f}{unit}), so those two are not clearly separated; more seeds would tell.")
        else:
            text += " With one seed per setting, differences this small may be noise."
        test_best = max((r for r in ranked if r["test_mean"] is not None),
                        key=lambda r: sign * r["test_mean"], default=None)
        if test_best is not None and test_best is not best:
            text += f" On test, **{test_best['setting']}** scored best ({show(test_best, 'test')})."
        timed = [r for r in ranked if r["seconds_per_epoch"]]
        if len(timed) > 1:
            fast = min(timed, key=lambda r: r["seconds_per_epoch"])
            slow = max(timed, key=lambda r: r["seconds_per_epoch"])
            if slow["seconds_per_epoch"] > 1.2 * fast["seconds_per_epoch"]:
                text += (f" Epochs took {fast['seconds_per_epoch']:.1f} s ({fast['setting']}) to "
                         f"{slow['seconds_per_epoch']:.1f} s ({slow['setting']}).")
    return text


def _decided(a: dict, b: dict, scale: float) -> tuple[float, float, bool | None]:
    """Gap between two rows' best validation means, their larger seed std, and whether the gap is
    more than twice that std (None with one seed: nothing to measure the noise against)."""
    gap = abs(a["val_best_mean"] - b["val_best_mean"]) * scale
    spread = max(a["val_best_std"] or 0.0, b["val_best_std"] or 0.0) * scale
    return gap, spread, (gap > 2 * spread) if min(a["runs"], b["runs"]) > 1 else None


def conclude(rows: list[dict], metric: str, mode: str, claim: dict | None = None) -> tuple[str, str]:
    """(one-sentence conclusion computed from the rows, verdict against the claim).

    Verdicts: agrees / agrees (not decided) / not decided / disagrees / no claim / no result.
    "Not decided" means the winner's margin is within two seed standard deviations (or one seed).
    """
    claim = claim or {}
    ranked = sorted((r for r in rows if r["val_best_mean"] is not None),
                    key=lambda r: -(1.0 if mode == "max" else -1.0) * r["val_best_mean"])
    if not ranked:
        return "No trial has finished, so the study concludes nothing yet.", "no result"
    unit, scale = (" points", 100.0) if _is_pct(metric) else ("", 1.0)
    best = ranked[0]
    show = lambda r: fmt_stat(metric, r["val_best_mean"], r["val_best_std"], r["runs"])  # noqa: E731
    text = f"**{best['setting']}** has the best validation {metric} ({show(best)})"
    decided = None
    if len(ranked) > 1:
        gap, spread, decided = _decided(best, ranked[1], scale)
        text += f", {gap:.2f}{unit} ahead of **{ranked[1]['setting']}**"
        text += {True: f" (more than twice the seed spread of {spread:.2f}{unit}: decided)",
                 False: f" (within two seed standard deviations, {spread:.2f}{unit}: not decided)",
                 None: " (one seed: not decided)"}[decided]
    text += "."
    source, wanted = claim.get("source", "the source report"), claim.get("best")
    if wanted is None:
        return text + (f" {source} claims nothing to compare with." if claim else ""), "no claim"
    claimed = next((r for r in ranked if r["setting"] == wanted), None)
    if claimed is None:
        return text + f" {source}'s setting ({wanted}) has no finished trial.", "no result"
    if claimed is best:
        verdict = "agrees" if decided else "agrees (not decided)"
        return text + f" This agrees with {source}'s claim.", verdict
    gap, spread, sure = _decided(best, claimed, scale)
    if sure:
        return (text + f" This disagrees with {source}'s claim: its pick, {wanted}, is {gap:.2f}{unit} "
                       f"behind, more than twice the seed spread."), "disagrees"
    why = "one seed" if sure is None else f"within two seed standard deviations ({spread:.2f}{unit})"
    return (text + f" {source}'s pick, {wanted}, is {gap:.2f}{unit} behind ({why}), so this neither confirms "
                   f"nor refutes {source}'s claim."), "not decided"


def scale_note(file_spec, trials) -> str:
    """What the run changed against the study file ('epochs 2 (file: 30), subset 0.02 (file: 1)'),
    from the resolved configs of the first trial as run and as the file alone would run it."""
    planned = file_spec.trials()
    if not trials or not planned:
        return ""
    ran = trials[0]
    same = next((t for t in planned if t.label == ran.label), planned[0])
    now, file = _flat(file_spec.resolve(ran).to_dict()), _flat(file_spec.resolve(same).to_dict())
    changed = [f"{k} {_show(now.get(k))} (file: {_show(file.get(k))})" for k in sorted(set(now) | set(file))
               if k not in RUN_ONLY and now.get(k) != file.get(k)]
    seeds = sorted({t.seed for t in trials})
    if seeds != sorted(file_spec.seeds):
        changed.append(f"seeds {seeds} (file: {file_spec.seeds})")
    return ("Reduced scale against the study file: " + ", ".join(changed) + "." if changed
            else "Full scale: every trial ran with the study file's settings.")


def _flat(cfg: dict) -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            out[key] = value
    return out


def _show(value) -> str:
    return "—" if value is None else (str(value) if not isinstance(value, float) else f"{value:g}")


# --------------------------------------------------------------------------- figures


def _per_class_figure(rows: list[dict], path: Path) -> Path | None:
    rows = [r for r in rows if r["per_class"]]
    if not rows:
        return None
    # A tuning report's settings name every tuned value: an in-axes legend of 8 such labels is
    # wider than the figure and constrained layout gives up, so the legend goes below the axes
    # with as many columns as fit across (about 80 characters at fontsize 8 on 7.5 inches).
    labels = [textwrap.fill(r["setting"], 80) for r in rows]
    longest = max(len(line) for label in labels for line in label.splitlines())
    ncols = max(1, min(4, len(rows), 80 // (longest + 6)))
    lines = -(-len(rows) // ncols) * max(label.count("\n") + 1 for label in labels)
    fig = figures.new_figure(7.5, 3.8 + 0.17 * lines)
    ax = fig.add_subplot()
    k = len(rows[0]["per_class"])
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        xs = np.arange(k) + (i - (len(rows) - 1) / 2) * width
        ax.bar(xs, 100 * np.asarray(r["per_class"]), width, label=labels[i], color=f"C{i % 10}")
    low = min(min(r["per_class"]) for r in rows) * 100
    ax.set_ylim(max(0.0, low - 0.15 * (100 - low) - 0.5), 100.0)
    ax.set_xticks(range(k), [str(c) for c in range(k)])
    figures.style_axes(ax, "class", "test accuracy (%)", "Test accuracy per class")
    fig.legend(fontsize=8, ncols=ncols, loc="outside lower center")
    return figures.save_figure(fig, path)


def _grad_norms_figure(rows: list[dict], path: Path) -> Path | None:
    rows = [r for r in rows if r.get("grad_norms_last_epoch")]
    if not rows:
        return None
    layers = list(dict.fromkeys(k for r in rows for k in r["grad_norms_last_epoch"]))
    fig = figures.new_figure(7.5, 4.2)
    ax = fig.add_subplot()
    for i, r in enumerate(rows):
        ys = [r["grad_norms_last_epoch"].get(k, np.nan) for k in layers]
        ax.plot(range(len(layers)), ys, marker="o", color=f"C{i % 10}", label=r["setting"])
    ax.set_yscale("log")
    ax.set_xticks(range(len(layers)), layers, rotation=45, ha="right", fontsize=8)
    figures.style_axes(ax, "layer (in the order the model defines them)", "gradient norm (RMS over steps)",
                        "Per-layer gradient norm in the last epoch")
    ax.legend(fontsize=8)
    return figures.save_figure(fig, path)


def _error_maps_figure(rows: list[dict], path: Path) -> Path | None:
    rows = [r for r in rows if r.get("error_map")]
    if not rows:
        return None
    maps = [np.asarray(r["error_map"]) for r in rows]
    top = max(float(m.max()) for m in maps)
    fig = figures.new_figure(2.3 * len(rows) + 0.8, 2.9)
    axes = fig.subplots(1, len(rows), squeeze=False)[0]
    for ax, r, m in zip(axes, rows, maps):
        image = ax.imshow(m, cmap="magma", vmin=0.0, vmax=top, interpolation="nearest")
        ax.set_title(f"{r['setting']}\nmean {m.mean():.3f}", fontsize=8)
        ax.set_xticks([]), ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="mean |denoised - clean|")
    return figures.save_figure(fig, path)


def _figures(groups, rows, metric, folder: Path) -> list[tuple[Path, str]]:
    out = []
    series = {label: _mean_history([r.history for r in runs if r.history]) for label, runs in groups}
    series = {k: v for k, v in series.items() if v}
    seeds = max((len(runs) for _, runs in groups), default=1)
    note = " (mean over seeds)" if seeds > 1 else ""
    for name in dict.fromkeys([metric, "loss"]):
        if any(f"val_{name}" in h[0] or f"train_{name}" in h[0] for h in series.values()):
            path = figures.plot_overlaid_curves(series, name, folder / f"curves_{name}.png")
            out.append((path, f"{figures.pretty_metric(name).capitalize()} per epoch: train (solid) and "
                              f"validation (dashed), one colour per setting{note}"))
    path = _per_class_figure(rows, folder / "per_class.png")
    if path:
        out.append((path, "Test accuracy per class, one bar per setting (mean over seeds)"))
    path = _grad_norms_figure(rows, folder / "grad_norms.png")
    if path:
        out.append((path, "Per-layer gradient norm (RMS over the last epoch's steps, before clipping; "
                          f"log scale), one line per setting{note}"))
    path = _error_maps_figure(rows, folder / "error_maps.png")
    if path:
        out.append((path, f"Where the errors sit: mean absolute error per pixel on the test images, one map "
                          f"per setting on one colour scale{note}"))
    return out


# --------------------------------------------------------------------------- rendering


def render(groups: list[tuple[str, list[Run]]], out_dir: Path, title: str, metric: str, mode: str,
           description: str = "", notes: Sequence[str] = (), claim: dict | None = None) -> Path:
    """out_dir/report.html (+ report.md, figures/*.png, summary.json). Returns the HTML path."""
    out_dir = Path(out_dir)
    rows = summarize(groups, metric)
    table = _table_rows(rows, metric)
    paragraph = auto_summary(rows, metric, mode)
    conclusion, verdict = conclude(rows, metric, mode, claim)
    figs = _figures(groups, rows, metric, out_dir / "figures")
    per_class = [{"class": c, **{r["setting"]: f"{100 * r['per_class'][c]:.2f}%" for r in rows if r["per_class"]}}
                 for c in range(max((len(r["per_class"]) for r in rows if r["per_class"]), default=0))]
    trials = [_trial_row(label, run, metric) for label, runs in groups for run in runs]
    io.write_json(out_dir / "summary.json", {"title": title, "metric": metric, "mode": mode, "notes": list(notes),
                                             "claim": claim or {}, "conclusion": conclusion, "verdict": verdict,
                                             "summary": paragraph, "rows": rows})
    conclusion_html, conclusion_md = _conclusion_parts(claim or {}, conclusion, verdict)

    h = htmlmod.escape
    body = [f"<h1>{h(title)}</h1>"]
    if description:
        body.append(f'<p class="subtitle">{h(description)}</p>')
    body += [f'<p class="note">{h(n)}</p>' for n in notes]
    body += conclusion_html
    body += ["<h2>Summary</h2>", f"<p>{_bold_html(paragraph)}</p>", html_table(table)]
    for path, caption in figs:
        body.append(f"<figure>{embed_png(path, caption)}<figcaption>{h(caption)}</figcaption></figure>")
    if per_class:
        body += ["<h2>Per-class test accuracy</h2>", html_table(per_class, formats={c: str for c in per_class[0]})]
    body += ["<h2>Trials</h2>", html_table(trials), f"<footer>digitlab {h(__version__)}</footer>"]
    io.write_text(out_dir / "report.html", html_page(title, "\n".join(body)))

    md = [f"# {title}", ""]
    if description:
        md += [description, ""]
    md += [f"> {n}" for n in notes] + ([""] if notes else [])
    md += conclusion_md
    md += ["## Summary", "", paragraph, "", markdown_table(table), ""]
    for path, caption in figs:
        md += [f"![{caption}]({path.relative_to(out_dir).as_posix()})", "", f"_{caption}_", ""]
    if per_class:
        md += ["## Per-class test accuracy", "", markdown_table(per_class, formats={c: str for c in per_class[0]}), ""]
    md += ["## Trials", "", markdown_table(trials), ""]
    io.write_text(out_dir / "report.md", "\n".join(md))
    return out_dir / "report.html"


def _conclusion_parts(claim: dict, conclusion: str, verdict: str) -> tuple[list[str], list[str]]:
    """The Conclusion section as HTML and as Markdown lines."""
    h = htmlmod.escape
    said = f"Claim ({claim.get('source', 'source report')}): {claim['text']}" if claim else ""
    html = ["<h2>Conclusion</h2>"] + ([f"<p>{h(said)}</p>"] if said else [])
    html += [f"<p>{_bold_html(conclusion)} <strong>Verdict: {h(verdict)}.</strong></p>"]
    md = ["## Conclusion", ""] + ([said, ""] if said else []) + [f"{conclusion} **Verdict: {verdict}.**", ""]
    return html, md


def restate(folder: str | Path, claim: dict) -> str:
    """Add (or redo) the Conclusion of a published report from its summary.json, for a study whose run
    folders are gone (the report's numbers stay as they were). Returns the verdict."""
    folder = Path(folder)
    summary = io.read_json(folder / "summary.json")
    conclusion, verdict = conclude(summary["rows"], summary["metric"], summary["mode"], claim)
    html_lines, md_lines = _conclusion_parts(claim, conclusion, verdict)
    for name, new, marker in (("report.html", "\n".join(html_lines) + "\n", "<h2>Summary</h2>"),
                              ("report.md", "\n".join(md_lines) + "\n", "## Summary")):
        text = (folder / name).read_text()
        start = text.find("<h2>Conclusion</h2>" if name.endswith("html") else "## Conclusion")
        text = (text[:start] if start >= 0 else text[:text.index(marker)]) + new + text[text.index(marker):]
        io.write_text(folder / name, text)
    io.write_json(folder / "summary.json", {**summary, "claim": claim, "conclusion": conclusion, "verdict": verdict})
    return verdict


def _bold_html(text: str) -> str:
    parts = htmlmod.escape(text).split("**")
    return "".join(f"<strong>{p}</strong>" if i % 2 else p for i, p in enumerate(parts))


def _trial_row(label: str, run: Run, metric: str) -> dict:
    m = run.metrics
    return {"run": run.path.name, "setting": label, "seed": run.config.get("seed"),
            "status": "done" if run.finished else ("unfinished" if run.history else "not run"),
            f"val_{metric}": m.get(f"val_{metric}"), f"test_{metric}": m.get(f"test_{metric}"),
            "best_epoch": m.get("best_epoch"), "epochs_run": m.get("epochs_run"),
            "seconds_per_epoch": m.get("seconds_per_epoch"), "wall_seconds": m.get("wall_seconds")}


# --------------------------------------------------------------------------- entry points


def study_report(folder: str | Path, file_spec=None) -> Path:
    """STUDY/report.html from STUDY/study.json and STUDY/runs/*. `file_spec` (the study file, when
    the caller has it) supplies the claim and the seeds the file plans, for a study run before them."""
    from digitlab.study.spec import read_plan

    folder = Path(folder)
    if not (folder / "study.json").is_file():
        raise DigitlabError(f"{folder} is not a study folder (no study.json)", "pass the folder `digitlab study` wrote")
    spec, trials = read_plan(folder)
    groups: dict[str, list[Run]] = {}
    for t in trials:
        groups.setdefault(t.label, []).append(Run(folder / "runs" / t.key))
    groups_list = list(groups.items())
    done = sum(r.finished for _, runs in groups_list for r in runs)
    file_spec = file_spec or _source_spec(folder)
    notes = [scale_note(file_spec, trials)] if file_spec is not None else []
    if done != len(trials):
        notes.append(f"{done} of {len(trials)} trials have finished; rerun the study to complete the rest.")
    first = next((r.config for _, runs in groups_list for r in runs if r.config), {})
    what = (f"{spec.task} · {first.get('model', '?')} · {first.get('epochs', '?')} epochs · "
            f"subset {first.get('subset', 1.0)} · seeds {spec.seeds}")
    desc = f"{spec.description} ({what})" if spec.description else what
    notes.append(f"Every trial's run directory is under runs/; TensorBoard shows them side by side with "
                 f"their hyper-parameters: tensorboard --logdir {folder.name}")
    claim = spec.claim or (file_spec.claim if file_spec is not None else {})
    return render(groups_list, folder, f"Study {spec.name}", spec.metric, spec.mode, desc, notes, claim)


def _source_spec(folder: Path):
    """The study file the folder was run from, if it is still where study.json says (else None)."""
    from digitlab.study import spec as specs

    source = Path(io.read_json(folder / "study.json").get("source") or "")
    try:
        return specs.load(source) if source.is_file() else None
    except DigitlabError:
        return None


def runs_report(run_dirs: Sequence[str | Path], out_dir: str | Path, labels: Sequence[str] | None = None) -> Path:
    """A comparison report for any run directories (each its own setting)."""
    runs = [Run(Path(p)) for p in run_dirs]
    for r in runs:
        if not r.config and not r.metrics:
            raise DigitlabError(f"{r.path} is not a run directory (no config.json or metrics.json)",
                                "pass folders written by `digitlab train` or a study")
    tasks = {r.config.get("task", "recognize") for r in runs}
    if len(tasks) > 1:
        raise DigitlabError(f"runs of different tasks ({', '.join(sorted(tasks))}) cannot be compared",
                            "pass runs of one task")
    metric, mode = PRIMARY.get(tasks.pop(), ("loss", "min"))
    names = list(labels) if labels else _unique_names(runs)
    return render([(n, [r]) for n, r in zip(names, runs)], Path(out_dir), f"Comparison of {len(runs)} runs",
                  metric, mode)


def _unique_names(runs: list[Run]) -> list[str]:
    names = [r.path.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{r.path.parent.name}/{r.path.name}" for r in runs]
