"""Run reports as ONE self-contained HTML file (and a Markdown twin).

The HTML embeds its figures as base64 data URIs and carries its CSS inline; a
Content-Security-Policy forbids any other load, so the file opens offline and cannot leak
a request. The small building blocks (`html_page`, `html_table`, `embed_png`,
`markdown_table`, `format_metric`) are public so study reports can reuse them.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

from digitlab import __version__
from digitlab.errors import DigitlabError
from digitlab.io import read_json, write_text
from digitlab.report.figures import is_accuracy, read_history

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
Formatter = Callable[[Any], str] | str

CSS = """
:root { color-scheme: light; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       margin: 0 auto; max-width: 1100px; padding: 1.5rem 2rem 3rem; color: #1d232a;
       line-height: 1.45; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; border-bottom: 1px solid #dde3ea; padding-bottom: .2rem; }
.subtitle { color: #5b6672; margin: 0 0 1rem; }
table { border-collapse: collapse; font-size: .9rem; margin: .4rem 0 1rem; }
th, td { padding: .28rem .7rem; border-bottom: 1px solid #e6eaef; text-align: left; vertical-align: top; }
th { background: #f3f6f9; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tbody tr:hover { background: #f8fafc; }
.scroll { overflow-x: auto; }
figure { margin: 1rem 0 1.8rem; }
figure img { max-width: 100%; height: auto; border: 1px solid #e6eaef; }
figcaption { color: #5b6672; font-size: .9rem; margin-top: .3rem; }
.note { color: #8a5a00; background: #fff8e6; padding: .4rem .7rem; border-radius: 4px; }
footer { margin-top: 2.5rem; color: #8a949e; font-size: .8rem; }
"""
# Only inline styles and data: images may load; everything else is blocked by the browser.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"


# --------------------------------------------------------------------------- value formatting


def format_duration(seconds: float) -> str:
    """'45.2 s', '12 min 03 s', '1 h 02 min': readable at every scale."""
    if not math.isfinite(seconds):
        return str(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds >= 1 else f"{seconds * 1000:.0f} ms"
    if seconds < 3600:
        minutes, secs = divmod(round(seconds), 60)
        return f"{minutes} min {secs:02d} s"
    hours, rest = divmod(round(seconds), 3600)
    return f"{hours} h {rest // 60:02d} min"


def _is_duration(key: str) -> bool:
    key = key.lower()
    return key in {"seconds", "time", "duration"} or key.endswith(("_seconds", "_time", "_s", "_sec"))


def format_metric(key: str, value: Any) -> str:
    """Format a value by what its name says it is: accuracy in %, seconds as a duration, etc."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, float)) and _is_duration(key) and math.isfinite(value):
        return format_duration(float(value))
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if is_accuracy(key) and 0.0 <= value <= 1.0:
            return f"{value * 100:.2f}%"
        if value.is_integer() and abs(value) < 1e15 and key.lower() in {"params", "epoch", "best_epoch"}:
            return f"{int(value):,}"
        if key.lower().endswith("psnr"):
            return f"{value:.2f} dB"
        if key.lower() == "lr" or key.lower().endswith("_lr"):
            return f"{value:.3g}"
        # Fixed decimals line up in history columns; tiny or huge values need exponents.
        return f"{value:.4f}" if 1e-3 <= abs(value) < 1e5 or value == 0 else f"{value:.3e}"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value, separators=(", ", ": "))
    return str(value)


def _apply_format(column: str, value: Any, formats: Mapping[str, Formatter] | None) -> str:
    fmt = (formats or {}).get(column)
    if fmt is None or value is None:
        return format_metric(column, value)
    if callable(fmt):
        return str(fmt(value))
    return fmt.format(value) if "{" in fmt else format(value, fmt)


def _columns(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None) -> list[str]:
    """Given columns, or every key in first-seen order."""
    if columns is not None:
        return list(columns)
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


# --------------------------------------------------------------------------- building blocks


def html_page(title: str, body_html: str) -> str:
    """A complete offline page: inline CSS, a CSP that blocks every external load.

    Written compact (no line breaks between tags, the CSS on one line): it is generated, reports are
    kept in the repository (docs/studies/), and one line per table row would make every report look
    like a copy of the others to line-based tools.
    """
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"{body_html}\n</body>\n</html>"
    )
    return compact(page)


def compact(page: str) -> str:
    """The page without line breaks between tags, its CSS on one line (see html_page)."""
    page = re.sub(r"<style>(.*?)</style>", lambda m: f"<style>{' '.join(m.group(1).split())}</style>", page, flags=re.S)
    return re.sub(r">\s*\n\s*<", "><", page.strip()) + "\n"


def html_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    formats: Mapping[str, Formatter] | None = None,
) -> str:
    """An escaped HTML table; `formats` maps a column to a callable or format spec ('.3f', '{:,}')."""
    cols = _columns(rows, columns)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = []
    for row in rows:
        cells = []
        for c in cols:
            value = row.get(c)
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            cls = ' class="num"' if numeric else ""
            cells.append(f"<td{cls}>{html.escape(_apply_format(c, value, formats))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<div class="scroll"><table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n</table></div>")


def embed_png(path: str | os.PathLike, alt: str) -> str:
    """An <img> whose PNG bytes travel inside the page, so the report is one portable file."""
    path = Path(path)
    data = path.read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise DigitlabError(f"{path} is not a PNG file", "re-create the figure or remove it from figures/")
    encoded = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{html.escape(alt)}">'


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    formats: Mapping[str, Formatter] | None = None,
) -> str:
    """A GitHub Markdown table: header, separator, one line per row (numbers right-aligned)."""
    cols = _columns(rows, columns)
    if not cols:
        return ""
    numeric = {
        c: any(isinstance(r.get(c), (int, float)) and not isinstance(r.get(c), bool) for r in rows)
        for c in cols
    }
    lines = [
        "| " + " | ".join(_md_cell(str(c)) for c in cols) + " |",
        "|" + "|".join("---:" if numeric[c] else "---" for c in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(_apply_format(c, row.get(c), formats)) for c in cols) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- run contents


def _load_run(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Everything a report shows; a run still training may lack metrics.json, which is fine."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise DigitlabError(f"run directory {run_dir} does not exist", "pass the directory `digitlab train` wrote")
    parts = {name: _read_json_or_empty(run_dir / f"{name}.json") for name in ("config", "metrics", "model")}
    history = read_history(run_dir) if (run_dir / "history.jsonl").is_file() else []
    if not any(parts.values()) and not history:
        raise DigitlabError(f"{run_dir} holds no config.json, metrics.json or history.jsonl",
                            "pass the directory `digitlab train` wrote")
    figures = sorted((run_dir / "figures").glob("*.png"), key=lambda p: (p.name != "curves.png", p.name))
    return {"dir": run_dir, "history": history, "figures": figures, **parts}


def _read_json_or_empty(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except ValueError as exc:
        raise DigitlabError(f"{path} is not valid JSON ({exc})", "re-run or repair the file") from None
    return data if isinstance(data, dict) else {}


def _title(run: Mapping[str, Any]) -> str:
    info = {**run["model"], **run["config"]}
    parts = [str(info[k]) for k in ("task", "model") if info.get(k)]
    return " · ".join(parts + [run["dir"].name])


def caption_for(path: Path) -> str:
    """'confusion_matrix.png' -> 'Confusion matrix'."""
    text = path.stem.replace("_", " ").replace("-", " ").strip()
    return text[:1].upper() + text[1:] if text else path.name


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, (int, float, str, bool))


def _metric_rows(metrics: Mapping[str, Any]) -> list[dict]:
    return [{"metric": k, "value": format_metric(k, v)} for k, v in metrics.items() if _is_scalar(v)]


def _per_class_rows(metrics: Mapping[str, Any]) -> list[dict]:
    """List-valued metrics of equal length (per-class accuracies) side by side, one row per class."""
    lists = {k: v for k, v in metrics.items()
             if isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)}
    if not lists:
        return []
    n = max(len(v) for v in lists.values())
    return [{"class": i, **{k: (v[i] if i < len(v) else None) for k, v in lists.items()}} for i in range(n)]


def _config_value(value: Any) -> str:
    """Settings as the user wrote them (0.25, true, null), not reformatted like metrics."""
    return value if isinstance(value, str) else json.dumps(value, separators=(", ", ": "))


def _flatten(config: Mapping[str, Any], prefix: str = "") -> list[dict]:
    """Nested config sections as dotted keys, so the table stays two columns wide."""
    rows = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            rows.extend(_flatten(value, f"{name}."))
        else:
            rows.append({"key": name, "value": _config_value(value)})
    return rows


def _history_columns(history: Sequence[Mapping[str, Any]]) -> list[str]:
    cols = _columns(history, None)
    scalar = [c for c in cols if all(_is_scalar(r.get(c)) for r in history)]
    return (["epoch"] if "epoch" in scalar else []) + [c for c in scalar if c != "epoch"]


def _model_rows(model: Mapping[str, Any]) -> list[dict]:
    rows = [{"key": k, "value": format_metric(k, v) if k == "params" else _config_value(v)}
            for k, v in model.items() if k != "model_args"]
    args = model.get("model_args")
    if isinstance(args, dict):
        rows += _flatten(args, "model_args.")
    return rows


# --------------------------------------------------------------------------- reports


def render_run_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """RUN/report.html: metrics, model, config, per-epoch history and every figure, in one file."""
    run = _load_run(run_dir)
    out = Path(out) if out is not None else run["dir"] / "report.html"
    title = _title(run)
    kv = {"formats": {"value": str}}
    sections = [f"<h1>{html.escape(title)}</h1>",
                f'<p class="subtitle">run <code>{html.escape(run["dir"].name)}</code></p>']
    if run["metrics"]:
        sections += ["<h2>Key metrics</h2>", html_table(_metric_rows(run["metrics"]), ["metric", "value"], **kv)]
        per_class = _per_class_rows(run["metrics"])
        if per_class:
            sections += ["<h2>Per-class metrics</h2>", html_table(per_class)]
    else:
        sections.append('<p class="note">No metrics.json yet: the run has not finished.</p>')
    if run["model"]:
        sections += ["<h2>Model</h2>", html_table(_model_rows(run["model"]), ["key", "value"], **kv)]
    if run["config"]:
        sections += ["<h2>Configuration</h2>", html_table(_flatten(run["config"]), ["key", "value"], **kv)]
    if run["history"]:
        sections += ["<h2>History</h2>", html_table(run["history"], _history_columns(run["history"]))]
    if run["figures"]:
        sections.append("<h2>Figures</h2>")
        for fig in run["figures"]:
            caption = caption_for(fig)
            sections.append(f"<figure>{embed_png(fig, caption)}"
                            f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    sections.append(f"<footer>digitlab {html.escape(__version__)}</footer>")
    write_text(out, html_page(title, "\n".join(sections)))
    return out


def render_run_markdown(run_dir: str | os.PathLike) -> Path:
    """RUN/report.md: the same content as the HTML, figures linked by relative path."""
    run = _load_run(run_dir)
    kv = {"formats": {"value": str}}
    parts = [f"# {_title(run)}", ""]
    if run["metrics"]:
        parts += ["## Key metrics", "", markdown_table(_metric_rows(run["metrics"]), ["metric", "value"], **kv), ""]
        per_class = _per_class_rows(run["metrics"])
        if per_class:
            parts += ["## Per-class metrics", "", markdown_table(per_class), ""]
    else:
        parts += ["_No metrics.json yet: the run has not finished._", ""]
    if run["model"]:
        parts += ["## Model", "", markdown_table(_model_rows(run["model"]), ["key", "value"], **kv), ""]
    if run["config"]:
        parts += ["## Configuration", "", markdown_table(_flatten(run["config"]), ["key", "value"], **kv), ""]
    if run["history"]:
        parts += ["## History", "", markdown_table(run["history"], _history_columns(run["history"])), ""]
    if run["figures"]:
        parts += ["## Figures", ""]
        for fig in run["figures"]:
            rel = fig.relative_to(run["dir"]).as_posix()
            parts += [f"![{caption_for(fig)}]({quote(rel)})", ""]
    out = run["dir"] / "report.md"
    write_text(out, "\n".join(parts))
    return out
