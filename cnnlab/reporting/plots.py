"""Matplotlib figures for run and sweep reports, rendered off-screen to PNG bytes.

Every function builds a ``matplotlib.figure.Figure`` directly (no pyplot), so no
global backend or figure registry is touched: it is safe to call from a training
process, a thread, or a test, and nothing needs closing. Figures are drawn by the
Agg canvas and returned as PNG bytes, which the report embeds as base64 and
``plot_curves`` writes to ``curves.png``. Inputs are the plain rows and lists of
the run-folder files; missing or non-finite values (written as null, or "nan" in
older run folders) become gaps in a line rather than errors. ``curves.png`` is
written through the one atomic writer, :func:`cnnlab.runs.write_bytes`.
"""
from __future__ import annotations

import io
import math
import re
import textwrap
from pathlib import Path
from typing import Any, Optional, Sequence

import functools
import warnings

import matplotlib
import numpy as np
from matplotlib import ticker
from matplotlib.figure import Figure

from cnnlab import runs
from cnnlab.reporting.results import number
from cnnlab.outputs import shown

DPI = 100
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
          "#bcbd22", "#17becf")
MAX_CONFUSION_ANNOTATED = 20  # above this many classes the cells are too small for numbers
MAX_LEGEND_ENTRIES = 12


# Names (class folders, settings, metric keys) are drawn as written: :func:`as_text` escapes every "$" in
# them, so matplotlib never reads a name such as "$\\undefinedmacro{$" as math text. Math text stays on
# for the axes' own tick labels (a log axis labels its ticks "$\\mathdefault{10^{-2}}$"). LaTeX is never
# used: text artists read the setting when they are created, and tick labels are created while drawing,
# so both the figure builders and png_bytes run in this context.
NO_LATEX = {"text.usetex": False}


def literal_text(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(NO_LATEX):
            return fn(*args, **kwargs)
    return wrapper


def as_text(name: Any, limit: Optional[int] = None) -> str:
    """A name as figure text: printable (:func:`cnnlab.reporting.results.shown`, cut to ``limit``) with each "$"
    escaped, so matplotlib draws it literally instead of parsing what lies between two of them as math."""
    return shown(name, limit).replace("$", "\\$")


def _num(v: Any) -> float:
    """A metric as a float, NaN when missing or not a number (matplotlib leaves a gap at NaN)."""
    x = number(v, finite=False)
    return math.nan if x is None else x


def column(rows: Sequence[dict], key: str) -> np.ndarray:
    return np.array([_num(r.get(key)) for r in rows], dtype=float)


@literal_text
def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    # A lighter zlib level: files grow ~10 % but encode about twice as fast.
    with warnings.catch_warnings():  # a class name in a script the font lacks is drawn as boxes, not warned
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    return buf.getvalue()


def steps_per_epoch(rows: Sequence[dict]) -> Optional[float]:
    """Iterations per epoch from the (step, epoch) pairs of the history, None if it cannot tell."""
    ratios = [_num(r.get("step")) / _num(r.get("epoch")) for r in rows
              if _num(r.get("epoch")) > 0 and _num(r.get("step")) > 0]
    return float(np.median(ratios)) if ratios else None


def _epoch_axis(ax, spe: Optional[float]) -> None:
    if spe:
        top = ax.secondary_xaxis("top", functions=(lambda s: np.asarray(s) / spe, lambda e: np.asarray(e) * spe))
        top.set_xlabel("epoch", fontsize=9)


def best_index(rows: Sequence[dict], best_step: Optional[float] = None) -> Optional[int]:
    """Row of the best checkpoint: the one at ``best_step`` if given, else the first highest val accuracy."""
    if best_step is not None:
        for i, r in enumerate(rows):
            if _num(r.get("step")) == _num(best_step):
                return i
    acc = column(rows, "val_accuracy")
    if acc.size == 0 or np.all(np.isnan(acc)):
        return None
    return int(np.nanargmax(acc))


# ----------------------------------------------------------------------------- one run


@literal_text
def curves_figure(rows: Sequence[dict], best_step: Optional[float] = None) -> Figure:
    """Loss, accuracy and learning rate against iterations, epochs on the top axis, best checkpoint marked."""
    # Fixed margins instead of constrained layout: this figure is drawn after every run, and solving the
    # layout of three axes with their epoch axes costs more than the drawing itself.
    fig = Figure(figsize=(15, 4.4))
    fig.subplots_adjust(left=0.045, right=0.99, bottom=0.11, top=0.82, wspace=0.22)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    step = column(rows, "step")
    spe = steps_per_epoch(rows)
    best = best_index(rows, best_step)
    for ax, key, title in ((ax_loss, "loss", "loss"), (ax_acc, "accuracy", "accuracy")):
        for split, color in (("train", COLORS[0]), ("val", COLORS[1])):
            ax.plot(step, column(rows, f"{split}_{key}"), marker="o", markersize=3, color=color,
                    label="train" if split == "train" else "validation")
        if best is not None:
            ax.axvline(step[best], color="#555", linestyle="--", linewidth=1, label="best checkpoint")
            ax.plot([step[best]], [column(rows, f"val_{key}")[best]], marker="*", markersize=14, color=COLORS[3],
                    linestyle="none")
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _epoch_axis(ax, spe)
    loss_all = np.concatenate([column(rows, "train_loss"), column(rows, "val_loss")])
    finite = loss_all[np.isfinite(loss_all) & (loss_all > 0)]
    if finite.size and finite.max() / finite.min() > 30:
        ax_loss.set_yscale("log")  # a loss that falls by orders of magnitude reads better on a log scale
    lr = column(rows, "lr")
    ax_lr.step(step, lr, where="post", color=COLORS[2], marker="o", markersize=3)
    lr_ok = lr[np.isfinite(lr) & (lr > 0)]
    if lr_ok.size and lr_ok.max() / lr_ok.min() > 10:
        ax_lr.set_yscale("log")
    elif lr_ok.size and lr_ok.max() == lr_ok.min():
        ax_lr.set_ylim(0, 1.5 * lr_ok.max())  # a constant rate: show it against zero, not a magnified flat line
    if best is not None:
        ax_lr.axvline(step[best], color="#555", linestyle="--", linewidth=1)
    ax_lr.set_title("learning rate (at each evaluation)")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    _epoch_axis(ax_lr, spe)
    if not len(rows):
        for ax in (ax_loss, ax_acc, ax_lr):
            ax.text(0.5, 0.5, "no evaluations recorded", ha="center", va="center", transform=ax.transAxes)
    return fig


def plot_curves(metrics_rows: Sequence[dict], out_png: Optional[Path] = None, *,
                best_step: Optional[float] = None) -> bytes:
    """Draw the learning curves of one run; write them to ``out_png`` when given. Returns the PNG bytes.

    ``metrics_rows`` are the rows of metrics.jsonl. Without ``best_step`` the best checkpoint is taken to be
    the first evaluation with the highest validation accuracy.
    """
    data = png_bytes(curves_figure(list(metrics_rows), best_step))
    if out_png is not None:
        runs.write_bytes(Path(out_png), data)
    return data


@literal_text
def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str = "") -> Figure:
    """Heat map coloured by the share of each true class (row), annotated with the counts."""
    cm = np.asarray(confusion, dtype=float)
    n = cm.shape[0]
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    side = min(11.0, max(4.5, 0.4 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    names = [as_text(c, 24) for c in classes] if len(classes) == n else [str(i) for i in range(n)]
    ax.set_xticks(range(n), names, rotation=45 if max(map(len, names)) > 2 else 0, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(as_text(title))
    if n <= MAX_CONFUSION_ANNOTATED:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    return fig


@literal_text
def lr_find_figure(record: dict) -> Figure:
    """The learning-rate range test (lr_find.json): the smoothed loss against the lr on a log axis, each step's
    loss faint behind it, the suggested lr marked and the rule that chose it in the title."""
    lrs, smoothed, losses = (np.array([_num(v) for v in record[k]], dtype=float) for k in ("lrs", "smoothed", "losses"))
    fig = Figure(figsize=(7.5, 4.6))
    fig.subplots_adjust(left=0.1, right=0.97, bottom=0.12, top=0.86)
    ax = fig.subplots()
    ax.plot(lrs, losses, color=COLORS[0], alpha=0.25, linewidth=1, label="loss of each step")
    ax.plot(lrs, smoothed, color=COLORS[0], linewidth=2, label="smoothed loss")
    ax.set_xscale("log")
    finite = np.isfinite(smoothed)
    if finite.any():
        i_min = int(np.nanargmin(np.where(finite, smoothed, np.nan)))
        low, high = smoothed[i_min], np.nanmax(smoothed[:i_min + 1])
        pad = 0.1 * max(high - low, 1e-3 * max(abs(low), 1e-12))
        ax.set_ylim(low - pad, high + pad)  # a diverging tail leaves the plot at the top
    if number(record.get("suggestion")) is not None:
        ax.axvline(record["suggestion"], color=COLORS[3], linestyle="--", linewidth=1.2,
                   label=f"suggested lr {record['suggestion']:.2g}")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    lines = [f"lr range test: {record.get('study', '')}", *textwrap.wrap(str(record.get("rule", "")), 100)]
    ax.set_title("\n".join(as_text(line) for line in lines), fontsize=9)
    return fig


@literal_text
def reliability_figure(reliability: dict, ece: Any = None, temperature: Any = None, title: str = "") -> Figure:
    """The reliability diagram of a split (summary.json ``<split>.reliability``): each confidence bin's accuracy
    as a bar against the diagonal of perfect calibration, the gap to the bin's mean confidence shaded, the
    number of predictions per bin below."""
    bins = int(reliability["bins"])
    width = 1.0 / bins
    left = np.arange(bins) * width
    acc = np.array([_num(a) for a in reliability["accuracy"]], dtype=float)
    conf = np.array([_num(c) for c in reliability["confidence"]], dtype=float)
    count = np.array([_num(c) for c in reliability["count"]], dtype=float)
    fig = Figure(figsize=(5.2, 5.6))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": (4, 1)})
    fig.subplots_adjust(left=0.14, right=0.97, bottom=0.1, top=0.92, hspace=0.08)
    shown_bins = np.isfinite(acc)
    ax.bar(left[shown_bins], acc[shown_bins], width=width, align="edge", color=COLORS[0], edgecolor="white",
           label="accuracy")
    gap_low, gap_high = np.fmin(acc, conf), np.fmax(acc, conf)
    ax.bar(left[shown_bins], (gap_high - gap_low)[shown_bins], bottom=gap_low[shown_bins], width=width,
           align="edge", color=COLORS[3], alpha=0.3, hatch="//", edgecolor=COLORS[3], label="gap to confidence")
    ax.plot([0, 1], [0, 1], linestyle="--", color="#555", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    words = [f"ECE {100 * _num(ece):.2f} %"] if number(ece) is not None else []
    if number(temperature) is not None:
        words.append(f"temperature {_num(temperature):.3g} (fitted on val)")
    ax.set_title(as_text(" · ".join(filter(None, [title, *words]))), fontsize=10)
    ax_n.bar(left, count, width=width, align="edge", color="#999")
    ax_n.set_yscale("log" if count.max(initial=0) > 0 else "linear")
    ax_n.set_ylabel("count", fontsize=8)
    ax_n.set_xlabel(f"confidence (top-class probability, {bins} bins)")
    return fig


@literal_text
def misclassified_figure(images, true, pred, confidence, classes: Sequence[str], columns: int = 8) -> Figure:
    """A grid of images (uint8 [K, C, H, W]) captioned 'true -> predicted (confidence)'.

    The tiles are pasted into one mosaic drawn on a single axes: one image and K captions lay out and
    render several times faster than K small axes.
    """
    images = np.asarray(images)
    k, c, h, w = images.shape
    cols = max(1, min(columns, k))
    rows_n = max(1, math.ceil(k / cols))
    gap_x, gap_y = max(2, w // 5), max(2, int(h * 0.5))  # room under each tile for its two-line caption
    mosaic = np.full(((h + gap_y) * rows_n, (w + gap_x) * cols, 3), 255, dtype=np.uint8)
    for idx in range(k):
        r, q = divmod(idx, cols)
        tile = np.transpose(images[idx][:3] if c >= 3 else np.repeat(images[idx][:1], 3, axis=0), (1, 2, 0))
        y0, x0 = r * (h + gap_y), q * (w + gap_x)
        mosaic[y0:y0 + h, x0:x0 + w] = tile
    inch_per_px = 1.3 / (w + gap_x)  # each tile and its gap about 1.3 inches wide, whatever the image size
    fig = Figure(figsize=(mosaic.shape[1] * inch_per_px, mosaic.shape[0] * inch_per_px))
    ax = fig.add_axes((0, 0, 1, 1))
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_axis_off()

    def name(i: int) -> str:
        return as_text(classes[i], 16) if 0 <= i < len(classes) else str(i)

    for idx in range(k):
        r, q = divmod(idx, cols)
        ax.text(q * (w + gap_x) + w / 2, r * (h + gap_y) + h + 1,
                f"{name(int(true[idx]))} → {name(int(pred[idx]))}\n{100 * float(confidence[idx]):.0f} %",
                ha="center", va="top", fontsize=7)
    return fig


# ----------------------------------------------------------------------------- sweeps


@literal_text
def factor_figure(series: dict[str, list[tuple[float, float, float]]], factor: str, metric: str,
                  log_x: bool) -> Figure:
    """The metric against one numeric factor: a line per series (mean) with a ± sd band over seeds.

    ``series`` maps a label (the other factors' values, or "all") to points ``(x, mean, sd)``.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for i, (label, points) in enumerate(series.items()):
        pts = sorted(points)
        x = np.array([p[0] for p in pts], dtype=float)
        mean = np.array([p[1] for p in pts], dtype=float)
        sd = np.array([0.0 if p[2] is None else p[2] for p in pts], dtype=float)
        color = COLORS[i % len(COLORS)]
        ax.plot(x, mean, marker="o", color=color, label=as_text(label, 80) if i < MAX_LEGEND_ENTRIES else None)
        ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.18, linewidth=0)
    if log_x:
        ax.set_xscale("log")
        # The swept values as plain numbers (0.0001, as in the sweep file), not the log formatter's powers of ten.
        ticks = sorted({float(p[0]) for points in series.values() for p in points})
        ax.set_xticks(ticks, [f"{t:g}" for t in ticks], rotation=45 if len(ticks) > 6 else 0)
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel(as_text(factor, 80))
    ax.set_ylabel(f"{as_text(metric, 40)} (mean ± sd over seeds)")
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


FRACTION_METRICS = ("accuracy", "precision", "recall", "f1")


def is_fraction_metric(metric: str) -> bool:
    """Whether a metric's values are fractions in [0, 1] (accuracy, precision, recall, F1), not a loss or time."""
    last = metric.rsplit(".", 1)[-1].lower()
    return any(last.startswith(name) or last.endswith(name) for name in FRACTION_METRICS)


def _natural(text: str) -> list:
    # "resnet56" before "resnet110": digit runs compare as numbers (re.split puts them at odd positions).
    return [int(part) if i % 2 else part.lower() for i, part in enumerate(re.split(r"(\d+)", text))]


def category_order(categories: Sequence[str], listed: Sequence[str] = ()) -> list[str]:
    """Bar categories in reading order, not the order results arrived: numbers numerically (other labels,
    such as "default", after them), else as ``listed`` (the sweep file's order), else alphabetically with
    digit runs read as numbers."""
    position = {c: i for i, c in enumerate(dict.fromkeys(listed))}

    def key(c: str) -> tuple:
        x = _num(c)
        if math.isfinite(x):
            return (0, x, 0, [])
        return (1, 0.0, position[c], []) if c in position else (2, 0.0, 0, _natural(c))

    return sorted(dict.fromkeys(categories), key=key)


def _error_extent(mean: float, sd: Optional[float], fraction: bool) -> tuple[float, float]:
    """The bottom and top of a bar's error bar as drawn: mean ± sd, cut at 0 and 1 for a fraction
    (an accuracy's mean cannot leave them, so neither does its spread's bar)."""
    sd = sd if sd is not None and math.isfinite(sd) else 0.0
    low, high = mean - sd, mean + sd
    return (max(0.0, low), min(1.0, high)) if fraction else (low, high)


@literal_text
def bars_figure(groups: dict[str, list[tuple[str, float, float]]], factor: str, metric: str,
                order: Sequence[str] = ()) -> Figure:
    """Bars of the metric for each value of a categorical factor (mean, sd error bar), grouped by series.

    Categories are sorted by :func:`category_order` (``order``: the values as the sweep file lists them);
    the y axis is zoomed to the means but always holds every error bar whole.
    """
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    categories = category_order([cat for points in groups.values() for cat, _, _ in points], order)
    finite = [m for pts in groups.values() for _, m, _ in pts if np.isfinite(m)]
    fraction = bool(finite) and is_fraction_metric(metric) and 0 <= min(finite) and max(finite) <= 1
    extents: list[tuple[float, float]] = []
    width = 0.8 / max(1, len(groups))
    for i, (label, points) in enumerate(groups.items()):
        by_cat = {c: (m, s) for c, m, s in points}
        shown_cats = [c for c in categories if c in by_cat]
        xs = [j + (i - (len(groups) - 1) / 2) * width for j, c in enumerate(categories) if c in by_cat]
        means = [by_cat[c][0] for c in shown_cats]
        bars = [_error_extent(m, by_cat[c][1], fraction) if np.isfinite(m) else (math.nan, math.nan)
                for c, m in zip(shown_cats, means)]
        extents += [b for b in bars if np.isfinite(b[0])]
        yerr = [[m - lo for m, (lo, _) in zip(means, bars)], [hi - m for m, (_, hi) in zip(means, bars)]]
        ax.bar(xs, means, width=width, yerr=np.nan_to_num(yerr), capsize=3, color=COLORS[i % len(COLORS)],
               label=as_text(label, 80) if i < MAX_LEGEND_ENTRIES else None)
    ax.set_xticks(range(len(categories)), [as_text(c, 24) for c in categories], rotation=20 if len(categories) > 4 else 0)
    if finite:
        # Accuracies of competing settings differ in the second decimal: zoom the y axis to show it, but
        # never so far that an error bar is cut (a 14 % ± 3 bar on an axis ending at 18 % hides its spread).
        lo, hi = min(finite), max(finite)
        pad = max(0.02, (hi - lo) * 0.5)
        lo_e, hi_e = min(e[0] for e in extents), max(e[1] for e in extents)
        margin = 0.05 * max(hi_e - lo_e, 1e-12)
        bottom = min(lo - pad, lo_e - margin)
        if lo_e >= 0:
            bottom = max(0.0, bottom)
        top = max(hi + pad, hi_e + margin)
        if fraction:
            top = min(top, 1.0)  # a chance-level bar beside a 97 % one must not stretch the axis past 100 %
        ax.set_ylim(bottom, top)
    ax.set_xlabel(as_text(factor, 80))
    ax.set_ylabel(f"{as_text(metric, 40)} (mean ± sd over seeds)")
    ax.grid(alpha=0.3, axis="y")
    if len(groups) > 1:
        ax.legend(fontsize=8)
    return fig


@literal_text
def sweep_curves_figure(curves: dict[str, dict[str, np.ndarray]]) -> Figure:
    """Validation loss and accuracy against iterations, one line per setting (mean over its seeds).

    ``curves`` maps a setting label to ``{"step": [...], "val_loss": [...], "val_accuracy": [...]}``.
    """
    shown = min(len(curves), MAX_LEGEND_ENTRIES)
    columns = max(1, min(shown, 3 if max((len(as_text(k, 80)) for k in curves), default=0) > 30 else 5))
    rows = -(-shown // columns)  # the legend sits below the panels, in type as large as the axis labels
    fig = Figure(figsize=(14, 4.6 + 0.3 * rows), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for i, (label, c) in enumerate(curves.items()):
        color = COLORS[i % len(COLORS)] if len(curves) <= len(COLORS) else None
        for ax, key in ((ax_loss, "val_loss"), (ax_acc, "val_accuracy")):
            ax.plot(c["step"], c[key], marker="o", markersize=2.5, color=color,
                    label=as_text(label, 80) if i < MAX_LEGEND_ENTRIES and ax is ax_acc else None)
    for ax, title in ((ax_loss, "validation loss"), (ax_acc, "validation accuracy")):
        ax.set_title(f"{title} (mean over seeds)")
        ax.set_xlabel("iteration")
        ax.grid(alpha=0.3)
    if curves:  # beside the panels, not over the curves of the accuracy panel
        fig.legend(loc="outside lower center", ncols=columns, fontsize=10, frameon=False)
    return fig
