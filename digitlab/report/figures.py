"""Figures for runs and studies, drawn with matplotlib's object API.

Every function builds its own `Figure` on an Agg canvas (no pyplot, no global state), so it
is safe to call from worker threads and importing this module changes nothing. Every file is
written through `atomic_path`, so a failed draw never leaves a half-written PNG behind.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from digitlab.errors import DigitlabError
from digitlab.io import atomic_path, read_json
from digitlab.runfolder import read_history  # noqa: F401 (also used by html and study reports)

DPI = 110
TRAIN_STYLE = "-"
VAL_STYLE = "--"
# History keys that are bookkeeping, not metrics to draw as train/val curves.
NON_METRIC_KEYS = {"epoch", "lr", "seconds"}
PRETTY_NAMES = {
    "loss": "loss",
    "acc": "accuracy",
    "psnr": "PSNR (dB)",
    "ssim": "SSIM",
    "mse": "MSE",
    "mae": "MAE",
    "score": "score",
    "kind_acc": "noise-kind accuracy",
}


# --------------------------------------------------------------------------- helpers


def new_figure(width: float, height: float) -> Figure:
    """A pyplot-free figure with its own Agg canvas, so threads never share state."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = DPI) -> Path:
    """Write the PNG atomically: a failed draw leaves neither the target nor a temp file."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


def is_accuracy(name: str) -> bool:
    """Accuracy-like metric names are drawn and printed in percent."""
    name = name.lower()
    return name == "acc" or name.endswith("_acc") or name.startswith("acc_") or "accuracy" in name


def pretty_metric(name: str) -> str:
    """Axis label for a metric suffix such as `acc` or `kind_acc`."""
    return PRETTY_NAMES.get(name, name.replace("_", " "))


def _as_fractions_to_percent(arrays: Iterable[np.ndarray]) -> bool:
    """Accuracies are stored as fractions; only scale them if they really are in [0, 1]."""
    values = np.concatenate([a[np.isfinite(a)] for a in arrays] or [np.array([])])
    return values.size > 0 and values.min() >= 0.0 and values.max() <= 1.0


def _series(history: Sequence[Mapping[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(epochs, values) for the entries that carry a numeric `key`; gaps are simply skipped."""
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if _is_number(value):
            epoch = row.get("epoch")
            xs.append(epoch if _is_number(epoch) else i + 1)
            ys.append(float(value) if math.isfinite(float(value)) else np.nan)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def history_metrics(history: Sequence[Mapping[str, Any]]) -> list[str]:
    """Metric names X with numeric `train_X` or `val_X`, loss first, then first-seen order."""
    names: list[str] = []
    for row in history:
        for key, value in row.items():
            for prefix in ("train_", "val_"):
                if key.startswith(prefix) and _is_number(value):
                    name = key[len(prefix):]
                    if name and name not in names and name not in NON_METRIC_KEYS:
                        names.append(name)
    return sorted(names, key=lambda n: (n != "loss", names.index(n)))


def style_axes(ax, xlabel: str | None = None, ylabel: str | None = None, title: str | None = None) -> None:
    if title:
        ax.set_title(title)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)


def _as_images(images: Any, what: str) -> np.ndarray:
    """(N, H, W) array from numpy/torch input; a (N, 1, H, W) channel axis is dropped."""
    arr = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if arr.ndim == 4 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise DigitlabError(
            f"{what}: expected images shaped (N, 28, 28), got shape {tuple(arr.shape)}",
            "pass a stack of 2-D grayscale images",
        )
    return arr


def _display_range(arr: np.ndarray) -> tuple[float, float]:
    """Fixed ranges for the usual encodings so images stay comparable; else the data range."""
    if arr.dtype == np.uint8:
        return 0.0, 255.0
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if lo >= 0.0 and hi <= 1.0:
        return 0.0, 1.0
    return lo, (hi if hi > lo else lo + 1.0)


def _blank_axes(ax) -> None:
    """Hide ticks and frame but keep the axis labels usable (axis('off') would hide them)."""
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)


def _empty_figure(path: str | os.PathLike, message: str, title: str | None) -> Path:
    """A small placeholder, e.g. 'no misclassified digits': a perfect model is not an error."""
    fig = new_figure(4.0, 1.6)
    ax = fig.add_subplot()
    _blank_axes(ax)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="0.35")
    if title:
        fig.suptitle(title)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- training curves


def plot_history(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike,
    title: str | None = None,
    best_epoch: int | None = None,
) -> Path:
    """One panel per metric (train solid, val dashed) plus a small learning-rate panel."""
    metrics = history_metrics(history)
    has_lr = any(_is_number(row.get("lr")) for row in history)
    if not metrics and not has_lr:
        raise DigitlabError(
            "history has no train_/val_ metrics to plot",
            "check that history.jsonl holds one JSON object per finished epoch",
        )
    ncols = min(3, max(1, len(metrics)))
    nrows = math.ceil(len(metrics) / ncols)
    ratios = [3.0] * nrows + ([1.2] if has_lr else [])
    fig = new_figure(4.3 * ncols + 0.4, 3.1 * nrows + (1.5 if has_lr else 0) + (0.4 if title else 0))
    grid = fig.add_gridspec(len(ratios), ncols, height_ratios=ratios)
    for i, name in enumerate(metrics):
        _draw_metric_panel(fig.add_subplot(grid[i // ncols, i % ncols]), history, name, best_epoch)
    if has_lr:
        _draw_lr_panel(fig.add_subplot(grid[-1, :]), history)
    if title:
        fig.suptitle(title, fontsize=13)
    return save_figure(fig, path)


def _draw_metric_panel(ax, history, name: str, best_epoch: int | None) -> None:
    curves = [(split, *_series(history, f"{split}_{name}")) for split in ("train", "val")]
    curves = [(split, x, y) for split, x, y in curves if x.size]
    percent = is_accuracy(name) and _as_fractions_to_percent(y for _, _, y in curves)
    scale = 100.0 if percent else 1.0
    for split, x, y in curves:
        ax.plot(
            x, y * scale,
            linestyle=TRAIN_STYLE if split == "train" else VAL_STYLE,
            color="C0" if split == "train" else "C1",
            marker="o" if x.size <= 30 else None, markersize=3, label=split,
        )
    if best_epoch is not None:
        ax.axvline(best_epoch, color="0.5", linestyle=":", linewidth=1, label=f"best epoch ({best_epoch})")
    label = pretty_metric(name) + (" (%)" if percent else "")
    style_axes(ax, "epoch", label, pretty_metric(name))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=8)


def _draw_lr_panel(ax, history) -> None:
    x, y = _series(history, "lr")
    ax.plot(x, y, color="C2", marker="o" if x.size <= 30 else None, markersize=3)
    positive = y[np.isfinite(y) & (y > 0)]
    if positive.size and positive.max() / positive.min() > 20:
        ax.set_yscale("log")  # step and cosine schedules span decades
    style_axes(ax, "epoch", "learning rate", "learning rate")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if ax.get_yscale() == "linear":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))


def plot_overlaid_curves(
    series: Mapping[str, Sequence[Mapping[str, Any]]],
    metric: str,
    path: str | os.PathLike,
    title: str | None = None,
) -> Path:
    """Compare settings of a study: one colour per setting, train solid, val dashed."""
    found = {
        label: [(split, *_series(history, f"{split}_{metric}")) for split in ("train", "val")]
        for label, history in series.items()
    }
    if not any(x.size for curves in found.values() for _, x, _ in curves):
        raise DigitlabError(
            f"no history has train_{metric} or val_{metric}",
            "pick a metric name that the histories record (e.g. loss, acc)",
        )
    percent = is_accuracy(metric) and _as_fractions_to_percent(
        y for curves in found.values() for _, _, y in curves
    )
    scale = 100.0 if percent else 1.0
    fig = new_figure(7.5, 4.6)
    ax = fig.add_subplot()
    handles = []
    for i, (label, curves) in enumerate(found.items()):
        color = f"C{i % 10}"
        for split, x, y in curves:
            if x.size:
                ax.plot(x, y * scale, color=color, linestyle=TRAIN_STYLE if split == "train" else VAL_STYLE,
                        marker="o" if x.size <= 30 else None, markersize=3)
        handles.append(Line2D([], [], color=color, label=str(label)))
    handles += [
        Line2D([], [], color="0.3", linestyle=TRAIN_STYLE, label="train"),
        Line2D([], [], color="0.3", linestyle=VAL_STYLE, label="val"),
    ]
    ylabel = pretty_metric(metric) + (" (%)" if percent else "")
    style_axes(ax, "epoch", ylabel, title or f"{pretty_metric(metric)}: train (solid) vs val (dashed)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(handles=handles, fontsize=8, loc="best")
    return save_figure(fig, path)


# --------------------------------------------------------------------------- classification


def plot_confusion(
    matrix: Any,
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    title: str = "Confusion matrix",
) -> Path:
    """Counts in the cells, colour by row share so rare classes read as clearly as common ones."""
    counts = np.asarray(matrix)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise DigitlabError(f"confusion matrix must be square (K, K), got shape {counts.shape}",
                            "pass counts with true classes on rows and predictions on columns")
    k = counts.shape[0]
    names = [str(c) for c in (class_names if class_names is not None else range(k))]
    row_sums = counts.sum(axis=1, keepdims=True).astype(float)
    shares = np.divide(counts, row_sums, out=np.zeros(counts.shape, dtype=float), where=row_sums > 0)
    size = max(4.5, 0.55 * k + 2.0)
    fig = new_figure(size + 1.0, size)
    ax = fig.add_subplot()
    image = ax.imshow(shares, cmap=colormaps["Blues"], vmin=0.0, vmax=1.0)
    fontsize = max(5, min(10, int(120 / max(k, 1))))
    for (i, j), count in np.ndenumerate(counts):
        if count or i == j:
            text = f"{count:g}" if isinstance(count, (float, np.floating)) else f"{int(count)}"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if shares[i, j] > 0.55 else "black")
    ax.set_xticks(range(k), names)
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    return save_figure(fig, path)


def plot_per_class(
    values: Sequence[float],
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    ylabel: str = "accuracy",
    title: str = "Per-class accuracy",
    percent: bool | None = None,
) -> Path:
    """Bars with their values printed; the y-range zooms in when values cluster (e.g. near 100%)."""
    vals = np.asarray(values, dtype=float).ravel()
    if vals.size == 0:
        raise DigitlabError("no per-class values to plot", "pass one value per class")
    names = [str(c) for c in (class_names if class_names is not None else range(vals.size))]
    if percent is None:
        percent = is_accuracy(ylabel) and _as_fractions_to_percent([vals])
    shown = vals * (100.0 if percent else 1.0)
    fig = new_figure(max(5.5, 0.6 * vals.size + 1.5), 4.0)
    ax = fig.add_subplot()
    heights = np.nan_to_num(shown, nan=0.0)
    bars = ax.bar(range(vals.size), heights, color="C0", edgecolor="white", zorder=2)
    for bar, value in zip(bars, shown):
        text = "n/a" if not np.isfinite(value) else (f"{value:.1f}" if percent else f"{value:.3g}")
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    ax.set_ylim(*_zoomed_ylim(shown, cap=100.0 if percent else None))
    ax.set_xticks(range(vals.size), names)
    style_axes(ax, "class", ylabel + (" (%)" if percent else ""), title)
    ax.grid(False, axis="x")
    return save_figure(fig, path)


def _zoomed_ylim(values: np.ndarray, cap: float | None) -> tuple[float, float]:
    """Start at zero unless the values cluster far from it; leave headroom for the labels."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = float(finite.min()), float(finite.max())
    span = max(hi - lo, 1e-3 * max(abs(hi), 1.0))
    bottom = lo - 0.8 * span if lo > 3 * span else min(0.0, lo - 0.1 * span)
    if lo >= 0:
        bottom = max(bottom, 0.0)
    top = hi + 0.18 * (hi - bottom)
    if cap is not None and hi <= cap:
        top = min(top, cap + 0.12 * (cap - bottom))
    return bottom, top


def plot_roc(fpr: Sequence[float], tpr: Sequence[float], auc: float, path: str | os.PathLike,
             title: str = "ROC curve") -> Path:
    """ROC with the chance diagonal for reference."""
    fig = new_figure(5.0, 5.0)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color="C0", linewidth=2, label=f"AUC = {float(auc):.4f}")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    style_axes(ax, "false positive rate", "true positive rate", title)
    ax.legend(loc="lower right")
    return save_figure(fig, path)


def plot_embedding_2d(points: Any, labels: Any, path: str | os.PathLike,
                      title: str = "2-D embedding") -> Path:
    """Scatter coloured by class; small translucent markers keep 10k points readable."""
    pts = np.asarray(points, dtype=float)
    labs = np.asarray(labels).ravel()
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] != labs.shape[0]:
        raise DigitlabError(f"embedding needs points (N, 2) and labels (N,), got {pts.shape} and {labs.shape}",
                            "project to two dimensions first and pass one label per point")
    fig = new_figure(6.4, 5.6)
    ax = fig.add_subplot()
    classes = np.unique(labs)
    cmap = colormaps["tab10" if classes.size <= 10 else "tab20"]
    size = 14 if pts.shape[0] <= 2000 else 4
    for i, cls in enumerate(classes):
        mask = labs == cls
        ax.scatter(pts[mask, 0], pts[mask, 1], s=size, alpha=0.7, color=cmap(i % cmap.N),
                   label=str(cls), linewidths=0, rasterized=True)
    style_axes(ax, "dimension 1", "dimension 2", title)
    ax.legend(title="class", markerscale=2.5 if size < 10 else 1.2, fontsize=8,
              loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, path)


# --------------------------------------------------------------------------- images


def plot_image_grid(
    images: Any,
    path: str | os.PathLike,
    titles: Sequence[str],
    title_colors: Sequence[str] | None = None,
    ncols: int = 8,
    suptitle: str | None = None,
) -> Path:
    """Digits with a small caption each (e.g. 'true 4 / pred 9 (0.83)'), optionally coloured.

    Drawn as one mosaic image on one axes with the captions as text: a figure of 48 axes took
    several seconds to lay out and render, this about a fifth of that (docs/speed.md)."""
    imgs = _as_images(images, "plot_image_grid")
    n = imgs.shape[0]
    if len(titles) != n or (title_colors is not None and len(title_colors) != n):
        raise DigitlabError(f"plot_image_grid got {n} images but {len(titles)} titles"
                            + ("" if title_colors is None else f" and {len(title_colors)} colours"),
                            "pass one title (and colour) per image")
    if n == 0:
        return _empty_figure(path, "no images to show", suptitle)
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    h, w = imgs.shape[1:]
    top, side = round(0.45 * h), round(0.08 * w)  # room for the caption above, a margin either side
    cell_h, cell_w = h + top, w + 2 * side
    mosaic = np.full((nrows * cell_h, ncols * cell_w), np.nan)  # NaN: the white gaps between digits
    for i in range(n):
        r, c = divmod(i, ncols)
        mosaic[r * cell_h + top:(r + 1) * cell_h, c * cell_w + side:c * cell_w + side + w] = imgs[i]
    width = 1.45 * ncols
    grid_height = width * mosaic.shape[0] / mosaic.shape[1]
    extra = 0.45 if suptitle else 0.0
    fig = Figure(figsize=(width, grid_height + extra))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.0, 1.0, grid_height / (grid_height + extra)))
    vmin, vmax = _display_range(imgs)
    ax.imshow(np.ma.masked_invalid(mosaic), cmap=colormaps["gray"].with_extremes(bad="white"),
              vmin=vmin, vmax=vmax, interpolation="nearest")
    ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncols)
        ax.text(c * cell_w + cell_w / 2 - 0.5, r * cell_h + top - 1.5, str(titles[i]), ha="center", va="bottom",
                fontsize=7.5, color=title_colors[i] if title_colors is not None else "black")
    if suptitle:
        fig.suptitle(suptitle, fontsize=12, y=1 - 0.1 * extra / (grid_height + extra))
    return save_figure(fig, path)


def plot_image_rows(
    rows: Sequence[tuple[str, Any]],
    path: str | os.PathLike,
    col_titles: Sequence[str] | None = None,
    suptitle: str | None = None,
) -> Path:
    """Aligned rows such as noisy / denoised / clean, each labelled on the left."""
    stacks = [(str(label), _as_images(imgs, f"plot_image_rows row {label!r}")) for label, imgs in rows]
    ncols = max((s.shape[0] for _, s in stacks), default=0)
    if ncols == 0:
        return _empty_figure(path, "no images to show", suptitle)
    nrows = len(stacks)
    fig = new_figure(1.3 * ncols + 0.9, 1.35 * nrows + (0.3 if col_titles else 0) + (0.4 if suptitle else 0))
    for r, (label, imgs) in enumerate(stacks):
        vmin, vmax = _display_range(imgs)
        for c in range(ncols):
            ax = fig.add_subplot(nrows, ncols, r * ncols + c + 1)
            _blank_axes(ax)
            if c < imgs.shape[0]:
                ax.imshow(imgs[c], cmap="gray", vmin=vmin, vmax=vmax, interpolation="nearest")
            if c == 0:
                ax.set_ylabel(label, fontsize=10, rotation=90)
            if r == 0 and col_titles is not None and c < len(col_titles):
                ax.set_title(str(col_titles[c]), fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=12)
    return save_figure(fig, path)


def plot_heatmap(array: Any, path: str | os.PathLike, title: str, colorbar_label: str) -> Path:
    """A per-pixel map (e.g. mean absolute error) with a labelled colour scale."""
    data = np.asarray(array, dtype=float)
    if data.ndim != 2:
        raise DigitlabError(f"heatmap needs a 2-D array, got shape {data.shape}", "pass an (H, W) array")
    fig = new_figure(5.2, 4.4)
    ax = fig.add_subplot()
    image = ax.imshow(data, cmap=colormaps["magma"], interpolation="nearest")
    style_axes(ax, "x (pixel)", "y (pixel)", title)
    ax.grid(False)
    fig.colorbar(image, ax=ax, shrink=0.85, label=colorbar_label)
    return save_figure(fig, path)


# --------------------------------------------------------------------------- run directories


def plot_curves_for_run(run_dir: str | os.PathLike) -> Path:
    """RUN/figures/curves.png from history.jsonl, titled with task/model and the best epoch marked."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    if not history:
        raise DigitlabError(f"no history.jsonl in {run_dir}", "point at a run directory written by `digitlab train`")
    config = _read_optional_json(run_dir / "config.json")
    metrics = _read_optional_json(run_dir / "metrics.json")
    parts = [str(config[k]) for k in ("task", "model") if config.get(k)]
    title = f"{' / '.join(parts)} - {run_dir.name}" if parts else run_dir.name
    best = metrics.get("best_epoch")
    return plot_history(history, run_dir / "figures" / "curves.png", title=title,
                        best_epoch=best if _is_number(best) else None)


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}
