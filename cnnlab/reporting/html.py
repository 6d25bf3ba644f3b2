"""HTML reports for a run folder or a sweep folder: one self-contained file that opens from disk.

``build_report(path)`` looks at what the folder holds: a ``results.jsonl`` makes it
a sweep folder, a ``summary.json`` or ``metrics.jsonl`` a run folder. It reads only
the files of the run-folder and sweep contracts (docs/CONTRACTS.md), draws the
figures with matplotlib (see cnnlab.reporting.plots), embeds them as base64 PNG, and renders
a Jinja2 template with inline CSS: no script, stylesheet, font or image is loaded
from anywhere else, so the page works offline and can be mailed as one file. A run
report shows the configuration, environment, model, learning curves, metrics per
split and per class, the confusion matrix, the test images the model got most
confidently wrong, timings and the run doctor's findings. A sweep report shows the
comparison tables, the metric against each swept factor, the mean learning curves
of each setting, and links to every run's own report (built when missing); its plots are
also written as PNG files (``plots/``) to be used elsewhere.
"""
from __future__ import annotations

import base64
import json
import math
import re
import statistics
from urllib.parse import quote
from collections import OrderedDict
from pathlib import Path
from typing import Any, Optional

from cnnlab import runs
from cnnlab.reporting import doctor
from cnnlab.reporting import plots
from cnnlab.reporting import results
from cnnlab.config.schema import ConfigError
from cnnlab.errors import one_line
from cnnlab.reporting.plots import plot_curves  # noqa: F401 - kept as report.plot_curves for callers

REPORT_NAME = "report.html"
PLOTS_DIR = "plots"  # a sweep report's plots as PNG files: <sweep>/plots/curves.png, <factor key>.png
# What a run's report is drawn from: a report.html newer than all of them is current and is reused
# by a sweep report (`cnnlab report SWEEP_DIR --force` rebuilds it anyway).
REPORT_SOURCES = ("summary.json", "metrics.jsonl", "config.yaml", "misclassified.pt", "curves.png")
CURVES_SOURCES = ("summary.json", "metrics.jsonl")  # curves.png (finish_run's) is reused when newer than these
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RUN_MARKERS = ("summary.json", "metrics.jsonl", "config.yaml")  # any of them makes a folder a run folder
DEFAULT_SWEEP_METRIC = "test.accuracy"
# Factors whose values span orders of magnitude: plotted on a log x axis.
LOG_FACTORS = {"lr", "head_lr", "max_lr", "min_lr", "batch_size", "weight_decay", "eps", "train_limit"}
LOG_RANGE = 50  # any positive numeric factor whose max/min reaches this is also drawn on a log axis
MAX_SERIES = 6  # more combinations of the other factors than this: one pooled line instead
LAYER_COLUMNS = ("name", "type", "output_shape", "params")
FINISHED = runs.SUCCEEDED  # runs whose metrics enter a sweep's statistics


class ReportError(ConfigError):
    """A folder that is neither a run folder nor a sweep folder (the CLI exits with code 2)."""


# ----------------------------------------------------------------------------- helpers


def _mapping(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _b64(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _fmt(v: Any, digits: int = 4) -> str:
    """Numbers for tables: floats to ``digits`` decimals, ints with thousands separators, '–' when missing."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    x = results.number(v, finite=False)
    if x is None:
        return str(v)
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def _seconds(v: Any) -> str:
    x = results.number(v, finite=False)
    if x is None:
        return "–"
    if x >= 120:
        return f"{x / 60:.1f} min ({x:,.0f} s)"
    return f"{x:.2f} s"


def is_current(target: Path, sources: tuple[str, ...]) -> bool:
    """True when ``target`` exists and is at least as new as each of ``sources`` (names in its folder) that exists."""
    try:
        made = target.stat().st_mtime_ns
    except OSError:
        return False
    for name in sources:
        try:
            if (target.parent / name).stat().st_mtime_ns > made:
                return False
        except OSError:
            continue  # an absent source cannot be newer
    return True


def _curves_png(run_dir: Path, history: list[dict], best_step: Any, reuse: bool) -> bytes:
    """The run's learning curves as PNG: curves.png as finish_run drew it when it is current (drawing it again
    is about a third of a run report's time), else drawn now."""
    png = run_dir / "curves.png"
    if reuse and not png.is_symlink() and is_current(png, CURVES_SOURCES):  # only the run folder's own file
        try:
            data = png.read_bytes()
        except OSError:
            data = b""
        if data.startswith(PNG_SIGNATURE):
            return data
    return plots.png_bytes(plots.curves_figure(history, best_step))


def _environment():
    from jinja2 import Environment, FileSystemLoader

    # Every value in every template is escaped (autoescape on for all of them, whatever their name):
    # class names, settings and errors come from files anyone can write.
    env = Environment(loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
                      autoescape=True,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = _fmt
    env.filters["seconds"] = _seconds
    return env


def _render(template: str, out: Path, **context) -> Path:
    html = _environment().get_template(template).render(**context)
    # Names read from JSON may hold lone surrogates (undecodable folder names): written as U+FFFD, not an error.
    runs.write_text(out, html.encode("utf-8", "replace").decode("utf-8"))
    return out


# ----------------------------------------------------------------------------- entry points


def finish_run(out_dir, log=print, html: bool = True) -> Optional[dict]:
    """Finish a run folder after training: doctor findings, curves.png, report.html.

    Runs the doctor on the folder's files, stores its ``findings`` in summary.json (atomic
    rewrite), writes ``curves.png`` and, when ``html``, ``report.html``, and logs each finding.
    :mod:`cnnlab.lifecycle` calls this after ``cnnlab.training.loop.run`` for every caller (training
    does not import reporting; the MLflow uploads follow there). Returns the updated summary, or None when the folder has no
    summary.json. A plotting or report problem is logged, never raised: the trained run stays.
    """
    out_dir = Path(out_dir)
    summary = runs.read_summary(out_dir)
    if summary is None:
        return None
    summary["findings"] = doctor.diagnose_run(out_dir)
    runs.write_json(out_dir / "summary.json", summary)
    best_step = results.number(_mapping(summary.get("best")).get("step"))
    # Each file on its own: a failure of one is logged naming the file, and the others are still written.
    try:
        plots.plot_curves(runs.read_metrics(out_dir), out_dir / "curves.png",
                          best_step=int(best_step) if best_step else None)
    except Exception as e:  # noqa: BLE001 - a plotting problem must not cost the trained run
        log(f"warning: could not write {out_dir / 'curves.png'}: {one_line(e)}")
    if html:
        try:
            write_run_report(out_dir, log=lambda m: log(f"warning: {m}"))
        except Exception as e:  # noqa: BLE001 - nor a report problem
            log(f"warning: could not write {out_dir / REPORT_NAME}: {one_line(e)}")
    for f in summary["findings"]:
        log(f"doctor [{f['severity']}] {f['code']}: {f['message']}")
    return summary



def build_report(path, log=results.warn, force: bool = False, counts: Optional[dict] = None) -> Path:
    """Write report.html into a run folder or a sweep folder (detected from its files); return its path.

    What cannot be read (a malformed results row, a truncated summary.json, a row whose run_dir
    points outside the sweep folder) is reported through ``log`` naming the file, and left out.
    A sweep's run reports are rebuilt only when missing or older than their run's files, and a run's
    curves.png is reused when current; ``force`` rebuilds and redraws everything. ``counts``: see
    write_sweep_report."""
    path = Path(path)
    if not path.is_dir():
        raise ReportError(f"report: {path} is not a folder; give a run folder or a sweep folder")
    if (path / "results.jsonl").exists():
        return write_sweep_report(path, log=log, force=force, counts=counts)
    if any((path / name).exists() for name in RUN_MARKERS):
        return write_run_report(path, log=log, reuse=not force)
    raise ReportError(
        f"report: {path} is neither a run folder ({', '.join(RUN_MARKERS)}) nor a sweep folder "
        "(results.jsonl); point at the folder that `cnnlab train --out` or `cnnlab sweep --out` wrote")


# ----------------------------------------------------------------------------- run report


def _load_misclassified(run_dir: Path) -> Optional[dict]:
    path = run_dir / "misclassified.pt"
    if not path.exists():
        return None
    import torch

    try:
        m = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a damaged optional file must not cost the whole report
        return None
    if not isinstance(m, dict) or not all(k in m for k in ("images", "true", "pred", "confidence")):
        return None
    if len(m["images"]) == 0:
        return {"count": 0}
    cams = m.get("cam_images")  # the same images under the Grad-CAM of their predicted class (lifecycle)
    return {"count": len(m["images"]), "images": m["images"].numpy(), "true": m["true"].tolist(),
            "pred": m["pred"].tolist(), "confidence": m["confidence"].float().tolist(),
            "cam_images": cams.numpy() if isinstance(cams, torch.Tensor) and len(cams) == len(m["images"]) else None}


def _layers(model: dict) -> tuple[list[str], list[list[str]]]:
    layers = model.get("layers") or []
    if not layers or not isinstance(layers[0], dict):
        return [], []
    cols = [c for c in LAYER_COLUMNS if any(c in r for r in layers)]
    cols += [c for c in layers[0] if c not in cols]
    return cols, [[_fmt(r.get(c)) if c == "params" else str(r.get(c, "")) for c in cols] for r in layers]


class _Problems:
    """The report's warnings: each is logged and listed on the page."""

    def __init__(self, log):
        self.log, self.messages = log, []

    def note(self, message: str) -> None:
        self.messages.append(message)
        self.log(message)

    def guarded(self, what: str, fn, default):
        """fn(), or ``default`` with a warning naming ``what`` when it raises."""
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - one bad part must not cost the whole report
            self.note(f"{what} left out of the report: {one_line(e)}")
            return default


def run_context(run_dir: Path, log=results.warn, reuse: bool = True) -> dict:
    """Everything the run template shows, read from the run folder.

    Every part is read on its own: a part a damaged or hand-edited file cannot give is left out,
    with a warning naming the file (through ``log`` and on the page). ``reuse``: embed curves.png when it
    is newer than the files it is drawn from, instead of drawing the curves again."""
    run_dir = Path(run_dir)
    problems = _Problems(log)
    summary = _run_summary(run_dir, problems)
    history = runs.read_metrics(run_dir)
    raw_classes = summary.get("classes")
    classes = [str(c) for c in raw_classes] if isinstance(raw_classes, list) else []
    splits = [s for s in ("train", "val", "test") if isinstance(summary.get(s), dict)]
    metric_rows = [{"split": s, **{k: summary[s].get(k) for k in
                                   ("accuracy", "loss", "precision_macro", "recall_macro", "f1_macro", "ece")}}
                   for s in splits]
    per_class = {s: problems.guarded(f"{run_dir / 'summary.json'}: {s}.per_class",
                                     lambda s=s: _per_class_rows(summary[s], classes), []) for s in splits}
    best = _mapping(summary.get("best"))
    images, confusion_split, mis = _run_images(run_dir, summary, history, classes, reuse, problems)
    findings, findings_source = _run_findings(run_dir, summary, problems)
    model = _mapping(summary.get("model"))
    layer_cols, layer_rows = problems.guarded(f"{run_dir / 'summary.json'}: model.layers", lambda: _layers(model),
                                              ([], []))
    env = _mapping(summary.get("env"))
    warnings = summary.get("warnings") if isinstance(summary.get("warnings"), list) else []
    return {
        "title": str(summary.get("name") or run_dir.name),
        "run_dir": str(run_dir.resolve()),
        "status": summary.get("status", "unknown (no summary.json)"),
        "error": summary.get("error"),
        "seed": summary.get("seed"),
        "data_source": summary.get("data_source"),
        "warnings": [str(w) for w in warnings],
        "problems": problems.messages,
        "findings": findings,
        "findings_source": findings_source,
        "best": best,
        "metric_rows": metric_rows,
        "calibration": _mapping(summary.get("calibration")),
        "per_class": per_class,
        "confusion_split": confusion_split,
        "images": images,
        "misclassified_count": (mis or {}).get("count"),
        "model": {k: model.get(k) for k in ("name", "params_total", "params_trainable", "flops_per_image")},
        "layer_cols": layer_cols,
        "layer_rows": layer_rows,
        "time": _run_times(_mapping(summary.get("time"))),
        "n_evaluations": len(history),
        "last_eval": history[-1] if history else {},
        "config_text": _config_text(run_dir, summary, problems),
        "env": [(str(k), v if isinstance(v, str) else ("" if v is None else str(v))) for k, v in env.items()],
    }


def _run_summary(run_dir: Path, problems: _Problems) -> dict:
    """summary.json, or {} (with a warning when the file is there but damaged)."""
    summary = runs.read_summary(run_dir)
    if summary is None:
        summary = {}
        if (run_dir / "summary.json").exists():
            problems.note(f"{run_dir / 'summary.json'}: not a readable JSON object (truncated or damaged); "
                          "the report shows what the other files hold")
    return summary


def _per_class_rows(split: dict, classes: list[str]) -> list[dict]:
    pc = _mapping(split.get("per_class"))
    n = len(pc.get("support") or [])
    return [{"cls": classes[i] if i < len(classes) else str(i),
             "precision": pc["precision"][i], "recall": pc["recall"][i], "f1": pc["f1"][i],
             "support": pc["support"][i]} for i in range(n)]


def _run_images(run_dir: Path, summary: dict, history: list[dict], classes: list[str], reuse: bool,
                problems: _Problems) -> tuple[dict[str, str], Optional[str], Optional[dict]]:
    """The run's figures as base64 PNG (curves, confusion, reliability, misclassified: each that can be drawn), the split
    of the confusion matrix shown (None when none is), and misclassified.pt's contents."""
    images: dict[str, str] = {}
    if history:
        best_step = _mapping(summary.get("best")).get("step")
        curves = problems.guarded(f"{run_dir / 'metrics.jsonl'}: the learning curves",
                                  lambda: _b64(_curves_png(run_dir, history, best_step, reuse)), None)
        if curves:
            images["curves"] = curves
    confusion_split = next((s for s in ("test", "val") if _mapping(summary.get(s)).get("confusion")), None)
    if confusion_split:
        confusion = problems.guarded(f"{run_dir / 'summary.json'}: the {confusion_split} confusion matrix",
                                     lambda: _b64(plots.png_bytes(plots.confusion_figure(
                                         summary[confusion_split]["confusion"], classes,
                                         f"{confusion_split} split"))), None)
        if confusion:
            images["confusion"] = confusion
        else:
            confusion_split = None
    test = _mapping(summary.get("test"))
    if isinstance(test.get("reliability"), dict):  # runs since calibration (issue 27): the test split's diagram
        temperature = _mapping(summary.get("calibration")).get("temperature")
        diagram = problems.guarded(f"{run_dir / 'summary.json'}: test.reliability",
                                   lambda: _b64(plots.png_bytes(plots.reliability_figure(
                                       test["reliability"], test.get("ece"), temperature, "test split"))), None)
        if diagram:
            images["reliability"] = diagram
    mis = problems.guarded(f"{run_dir / 'misclassified.pt'}", lambda: _load_misclassified(run_dir), None)
    if mis and mis["count"]:
        grid = problems.guarded(f"{run_dir / 'misclassified.pt'}: the misclassified images",
                                lambda: _b64(plots.png_bytes(plots.misclassified_figure(
                                    mis["images"], mis["true"], mis["pred"], mis["confidence"], classes))), None)
        if grid:
            images["misclassified"] = grid
        if mis.get("cam_images") is not None:
            cams = problems.guarded(f"{run_dir / 'misclassified.pt'}: the Grad-CAM pictures",
                                    lambda: _b64(plots.png_bytes(plots.misclassified_figure(
                                        mis["cam_images"], mis["true"], mis["pred"], mis["confidence"], classes))),
                                    None)
            if cams:
                images["misclassified_cam"] = cams
    return images, confusion_split, mis


def _run_findings(run_dir: Path, summary: dict, problems: _Problems) -> tuple[list[dict], str]:
    """The run doctor's findings (those the trainer stored, else computed now) and where they come from."""
    findings = summary.get("findings")
    findings_source = "stored by the trainer"
    if not isinstance(findings, list):
        findings, findings_source = problems.guarded(f"{run_dir}: the run doctor", lambda: doctor.diagnose_run(run_dir),
                                                     []), "computed now from the run folder"
    return [f for f in findings if isinstance(f, dict)], findings_source


def _run_times(t: dict) -> dict:
    epoch_s = [x for x in (t.get("epoch_s") if isinstance(t.get("epoch_s"), list) else [])
               if results.number(x, finite=False) is not None]
    return {
        "total_s": t.get("total_s"), "train_s": t.get("train_s"), "eval_s": t.get("eval_s"),
        "data_s": t.get("data_s"), "images_per_s": t.get("train_images_per_s"),
        "curve_eval_s": t.get("curve_eval_s"), "setup_s": t.get("setup_s"),  # none in runs of older versions
        "epoch_mean_s": statistics.fmean(results.number(x, finite=False) for x in epoch_s) if epoch_s else None,
        "epoch_s": epoch_s,
    }


def _config_text(run_dir: Path, summary: dict, problems: _Problems) -> Optional[str]:
    """config.yaml as text, else the config summary.json holds as YAML, else None."""
    config_text = problems.guarded(f"{run_dir / 'config.yaml'}",
                                   lambda: (run_dir / "config.yaml").read_text(errors="replace")
                                   if (run_dir / "config.yaml").exists() else None, None)
    if config_text is None and summary.get("config"):
        import yaml

        config_text = problems.guarded(f"{run_dir / 'summary.json'}: config",
                                       lambda: yaml.safe_dump(summary["config"], sort_keys=False), None)
    return config_text


def write_run_report(run_dir, log=results.warn, reuse: bool = True) -> Path:
    """Write ``report.html`` into a run folder; return its path (``reuse``: see run_context)."""
    run_dir = Path(run_dir)
    return _render("run.html.j2", run_dir / REPORT_NAME, **run_context(run_dir, log=log, reuse=reuse))


# ----------------------------------------------------------------------------- sweep report


def _swept_keys(rows: list[dict]) -> list[str]:
    """Settings keys that take more than one value across the runs (all keys if none varies)."""
    keys: list[str] = []
    for r in rows:
        for k in (r.get("settings") or {}):
            if k not in keys and k != "seed":
                keys.append(k)
    varying = [k for k in keys if len({repr((r.get("settings") or {}).get(k)) for r in rows}) > 1]
    return varying or keys


def _label(settings: dict, keys: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={_value_label(settings.get(k))}" for k in keys) or "all runs"


def _mean_sd(values: list[float]) -> tuple[Optional[float], Optional[float]]:
    # No spread from a single run: None (shown as "–"), never a made-up 0.
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _is_numeric(values: list[Any]) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _log_axis(key: str, values: list[float]) -> bool:
    if key.split(".")[-1] in LOG_FACTORS:
        return all(v > 0 for v in values)
    return all(v > 0 for v in values) and max(values) / min(values) >= LOG_RANGE


def _value_label(v: Any) -> str:
    # As cnnlab.reporting.compare shows settings: null is the builder's default, lists as JSON.
    if v is None:
        return "default"
    return v if isinstance(v, str) else json.dumps(v)


def _factor_plots(rows: list[dict], keys: list[str], metric: str, plan: Optional[dict] = None) -> list[dict]:
    """One figure per swept factor: a line (numeric) or bars (categorical) of the metric, mean ± sd over seeds.

    The other factors split the runs into series (one line or bar colour each) while there are at most
    MAX_SERIES of them, else they are pooled. In a one-factor-at-a-time sweep only the runs whose other
    factors sit at the base case belong to a factor's plot.
    """
    plan = plan or {}
    figures = []
    groups = [list(g) for g in plan.get("factors") or [] if isinstance(g, list) and g]
    for key in keys:
        if any(key in g and g[0] != key for g in groups):
            continue  # a zip partner (loss.name's model.softmax_output): it changes with, and is plotted as, its group
        partners = {k for g in groups if key in g for k in g}
        others = [k for k in keys if k != key and k not in partners]
        members_all = rows
        if plan.get("ofat"):
            base = plan.get("base_settings") or {}
            members_all = [r for r in rows if all((r.get("settings") or {}).get(k) == base.get(k) for k in others)]
            others = []
        values = [(r.get("settings") or {}).get(key) for r in members_all]
        series_of: dict[str, list[dict]] = {}
        for r in members_all:
            series_of.setdefault(_label(r.get("settings") or {}, others) if others else "all runs", []).append(r)
        if len(series_of) > MAX_SERIES:
            series_of = {"all runs (other factors pooled)": members_all}
        numeric = bool(values) and _is_numeric(values)
        series = {}
        for label, members in series_of.items():
            by_value: dict[Any, list[float]] = OrderedDict()
            for r in members:
                if r.get("status") not in FINISHED:
                    continue  # a diverged or failed run has no result to average (compare does the same)
                v, m = (r.get("settings") or {}).get(key), results.number(results.dig(r, metric), finite=False)
                if m is not None and math.isfinite(m):
                    by_value.setdefault(v if numeric else _value_label(v), []).append(m)
            series[label] = [(v, *_mean_sd(ms)) for v, ms in by_value.items()]
        series = {k: v for k, v in series.items() if v}
        if not series:
            continue
        if numeric:
            log_x = _log_axis(key, [float(v) for v in values])
            fig = plots.factor_figure(series, key, metric, log_x)
            kind = "log x axis" if log_x else "linear x axis"
        else:
            listed = [_value_label(r["settings"][key]) for r in plan.get("runs") or [] if key in r["settings"]]
            fig = plots.bars_figure(series, key, metric, order=listed)  # bars in the sweep file's order
            kind = "categorical"
        png = plots.png_bytes(fig)
        figures.append({"key": key, "kind": kind, "src": _b64(png), "png": png})
    return figures


def _mean_curves(run_dirs: dict, groups: "OrderedDict[str, list[dict]]") -> dict:
    """Per setting, the validation curves averaged over its seeds at each recorded step.

    ``run_dirs`` maps run ids to their checked run folders (inside the sweep folder)."""
    import numpy as np

    curves = {}
    for label, members in groups.items():
        at_step: dict[float, dict[str, list[float]]] = {}
        for r in members:
            if run_dirs.get(r["run_id"]) is None:
                continue
            for row in runs.read_metrics(run_dirs[r["run_id"]]):
                step = results.number(row.get("step"), finite=False)
                if step is None:
                    continue
                slot = at_step.setdefault(step, {"val_loss": [], "val_accuracy": []})
                for k in slot:
                    v = results.number(row.get(k), finite=False)
                    if v is not None and math.isfinite(v):
                        slot[k].append(v)
        if not at_step:
            continue
        steps = sorted(at_step)
        curves[label] = {"step": np.array(steps)}
        for k in ("val_loss", "val_accuracy"):
            # A run stopped early simply contributes fewer points; each step averages the seeds it has.
            curves[label][k] = np.array([statistics.fmean(at_step[s][k]) if at_step[s][k] else math.nan
                                         for s in steps])
    return curves


def _compare_tables(sweep_dir: Path, keys: list[str], metric: str) -> list[dict]:
    """The comparison table(s) of cnnlab.reporting.compare as HTML-ready rows; an explanation when one cannot be made.

    The main table is by every swept key (by ``base`` when the sweep varies none) (rows: the first key, columns: the others); with several keys, one
    table per key follows, pooling the others. compare() is called rather than write_compare() so that a
    report never overwrites a compare.md the user wrote with other --by keys.
    """
    keys = keys or ["base"]  # a sweep of one setting (only seeds): one row pooling them
    try:
        from cnnlab.reporting import compare
    except ImportError as e:
        return [{"title": "comparison", "error": f"cnnlab.reporting.compare is not available ({e})"}]
    wanted = [keys] + ([[k] for k in keys] if len(keys) > 1 else [])
    tables = []
    for by in wanted:
        title = f"{metric} by {' × '.join(by)}"
        try:
            result = compare.compare(sweep_dir, by=by, metric=metric, log=lambda m: None)  # warned once already
        except Exception as e:  # noqa: BLE001 - one table failing must not lose the rest of the report
            tables.append({"title": title, "error": f"{type(e).__name__}: {e}"})
            continue
        unit = " (%)" if result.percent else ""
        head = [" \\ ".join([", ".join(result.row_keys) or "—", " × ".join(result.col_keys) or metric + unit])]
        head += [" / ".join(c) or metric + unit for c in result.cols]
        body = []
        for r in result.rows:
            cells = []
            for c in result.cols:
                cell = result.cells.get((r, c))
                # cell_text marks the best cell with Markdown bold; the HTML shows that with a class instead.
                cells.append({"text": result.cell_text(cell).replace("**", ""),
                              "best": bool(cell and cell.is_best)})
            body.append({"label": " / ".join(r) or "all", "cells": cells})
        tables.append({"title": title, "head": head, "rows": body, "notes": list(result.notes)})
    return tables


def _claims_table(sweep_dir: Path, plan: dict, rows: list[dict], note) -> Optional[dict]:
    """The verdicts of the claims the sweep file carried (cnnlab.reporting.claims), as the template's rows."""
    from cnnlab.reporting import claims

    try:
        claim_set = claims.from_plan(plan, str(sweep_dir / results.PLAN))
        verdicts = claims.judge_sweep(sweep_dir, claim_set, rows)
    except Exception as e:  # noqa: BLE001 - the rest of the report still shows
        note(f"{sweep_dir / REPORT_NAME}: the claims' verdicts left out: {one_line(e)}")
        return None
    return {"cut": claim_set.cut, "rows": [
        {"claim": f"{v.claim.text} (a {v.claim.relation} {'b' if v.b is not None else 'level'})",
         "study": f"{v.claim.study} ({v.claim.where})", "a": claims.cell_text(v.a, v.percent),
         "b": claims.against_text(v), "diff": claims.difference_text(v), "word": v.label,
         "verdict": claims.verdict_text(v).replace(f"**{v.label}**: ", "")} for v in verdicts]}


def run_link(sweep_dir: Path, run_dir: Path) -> str:
    """The href of a run's report: a relative, percent-encoded path below the sweep folder.

    ``run_dir`` has been checked to lie inside the sweep folder (results.run_dir_of); encoding every
    segment (``:`` too) means no part of it can read as a scheme, a query or another folder."""
    rel = run_dir.relative_to(Path(sweep_dir).resolve())
    return "./" + "/".join(quote(part, safe="") for part in rel.parts) + "/" + REPORT_NAME


def sweep_context(sweep_dir: Path, metric: str = DEFAULT_SWEEP_METRIC, build_run_reports: bool = True,
                  log=results.warn, force: bool = False) -> dict:
    """Everything the sweep template shows. Run reports that are missing or older than their run's files are
    (re)built when ``build_run_reports``; ``force`` rebuilds every one. ``run_reports`` counts them."""
    sweep_dir = Path(sweep_dir)
    problems = _Problems(log)
    note = problems.note
    rows, run_dirs = _sweep_rows(sweep_dir, note)
    plan = results.load_plan(sweep_dir, log=note) or {}
    rows, keys = _swept_settings(sweep_dir, plan, rows)
    if plan:
        plan = {**plan, "base_settings": results.base_settings(sweep_dir, plan, keys, rows)}
    groups: "OrderedDict[str, list[dict]]" = OrderedDict()
    for r in rows:
        groups.setdefault(_label(r.get("settings") or {}, keys), []).append(r)
    settings_table = _settings_table(groups, metric)
    best_label = settings_table[0]["label"] if settings_table and settings_table[0]["n_ok"] else None
    built = {"built": 0, "current": 0}
    run_rows = []
    for r in rows:
        run_dir = run_dirs.get(r["run_id"])
        if build_run_reports and run_dir is not None:
            _build_run_report(run_dir, force, built, note)
        run_rows.append(_run_row(sweep_dir, r, run_dir, keys, metric))
    images, pngs = {}, {}
    curves = _mean_curves(run_dirs, groups)
    if curves:
        try:
            pngs["curves"] = plots.png_bytes(plots.sweep_curves_figure(curves))
            images["curves"] = _b64(pngs["curves"])
        except Exception as e:  # noqa: BLE001 - the tables still show
            note(f"{sweep_dir / REPORT_NAME}: the learning curves per setting left out: {one_line(e)}")
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[str(r.get("status"))] = statuses.get(str(r.get("status")), 0) + 1
    try:
        factor_plots = _factor_plots(rows, keys, metric, plan)
    except Exception as e:  # noqa: BLE001 - the tables still show
        factor_plots = []
        note(f"{sweep_dir / REPORT_NAME}: the factor plots left out: {one_line(e)}")
    return {
        "title": sweep_dir.resolve().name,
        "sweep_dir": str(sweep_dir.resolve()),
        "metric": metric,
        "keys": keys,
        "held_fixed": [(k, _value_label(v)) for k, v in results.held_fixed(sweep_dir, rows, keys)],
        "n_runs": len(rows),
        "statuses": statuses,
        "settings_table": settings_table,
        "best_label": best_label,
        "compare_tables": _compare_tables(sweep_dir, keys, metric) if rows else [],
        "claims": _claims_table(sweep_dir, plan, rows, note) if plan.get("claims") and rows else None,
        "factor_plots": factor_plots,
        "images": images,
        "pngs": {**pngs, **{f"factor {f['key']}": f["png"] for f in factor_plots}},  # the plots' bytes, by name
        "run_rows": run_rows,
        "run_reports": built,
        "problems": problems.messages,
    }


def _sweep_rows(sweep_dir: Path, note) -> tuple[list[dict], dict[str, Path]]:
    """results.jsonl's rows whose run folder lies inside the sweep folder, and those folders by run id."""
    rows, run_dirs = [], {}
    for r in results.load_results(sweep_dir, log=note):
        run_dir, problem = results.run_dir_of(sweep_dir, r)
        if problem:  # never read, link or write outside the sweep folder
            note(f"{sweep_dir / results.RESULTS}: run {r['run_id']!r}: {problem}; row skipped")
            continue
        rows.append(r)
        run_dirs[r["run_id"]] = run_dir
    return rows, run_dirs


def _swept_settings(sweep_dir: Path, plan: dict, rows: list[dict]) -> tuple[list[dict], list[str]]:
    """The rows with every swept key in their settings, and the swept keys: the plan's first, then those that
    only runs of another sweep file run into this folder vary."""
    planned_keys = [k for k in plan.get("keys") or [] if k != "seed"]
    rows = results.fill_settings(sweep_dir, rows, list(dict.fromkeys(
        planned_keys + [k for r in rows for k in r.get("settings") or {}])))
    keys = planned_keys + [k for k in _swept_keys(rows) if k not in planned_keys and len(
        {repr((r.get("settings") or {}).get(k)) for r in rows}) > 1] if planned_keys else _swept_keys(rows)
    return rows, keys


def _settings_table(groups: "OrderedDict[str, list[dict]]", metric: str) -> list[dict]:
    """One row per setting: its runs, the metric's mean, sd, min and max over the finished ones, the mean time;
    best first, settings with no finished run last."""
    table = []
    for label, members in groups.items():
        vals = [m for m in (results.number(results.dig(r, metric), finite=False) for r in members
                            if r.get("status") in FINISHED)
                if m is not None and math.isfinite(m)]
        mean, sd = _mean_sd(vals)
        times = [t for t in (results.number(r.get("time_s"), finite=False) for r in members) if t is not None]
        table.append({"label": label, "n": len(members), "n_ok": len(vals), "mean": mean, "sd": sd,
                      "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                      "time_s": statistics.fmean(times) if times else None})
    table.sort(key=lambda s: -s["mean"] if s["n_ok"] else math.inf)
    return table


def _build_run_report(run_dir: Path, force: bool, built: dict, note) -> None:
    """(Re)build a run's report when missing or stale (always with ``force``), counting it in ``built``."""
    if not ((run_dir / "summary.json").exists() or (run_dir / "metrics.jsonl").exists()):
        return
    if not force and is_current(run_dir / REPORT_NAME, REPORT_SOURCES):
        built["current"] += 1
        return
    try:
        write_run_report(run_dir, log=note, reuse=not force)
        built["built"] += 1
    except Exception as e:  # noqa: BLE001 - a broken run keeps its row, just without a link
        note(f"could not write {run_dir / REPORT_NAME}: {one_line(e)}")


def _run_row(sweep_dir: Path, r: dict, run_dir: Optional[Path], keys: list[str], metric: str) -> dict:
    """A run's row of the sweep report, with the link to its report when it has one."""
    link = run_link(sweep_dir, run_dir) if run_dir is not None and (run_dir / REPORT_NAME).is_file() else None
    return {"run_id": r.get("run_id"), "label": _label(r.get("settings") or {}, keys),
            "seed": r.get("seed"), "status": r.get("status"), "metric": results.dig(r, metric),
            "best_val": results.dig(r, "best.val_accuracy"), "best_epoch": results.dig(r, "best.epoch"),
            "time_s": r.get("time_s"), "link": link}


def write_sweep_report(sweep_dir, metric: str = DEFAULT_SWEEP_METRIC, log=results.warn, force: bool = False,
                       counts: Optional[dict] = None) -> Path:
    """Write ``report.html`` into a sweep folder (and each run's report that is missing or stale; every one with
    ``force``), and its plots as PNG files into ``plots/``; return the report's path. ``counts``, when given,
    receives {"built": n, "current": n} of the run reports and "plots": the PNG files written."""
    sweep_dir = Path(sweep_dir)
    context = sweep_context(sweep_dir, metric, log=log, force=force)
    written = write_plot_files(sweep_dir / PLOTS_DIR, context["pngs"], log=log)
    if counts is not None:
        counts.update(context["run_reports"], plots=written)
    return _render("sweep.html.j2", sweep_dir / REPORT_NAME, **context)


def write_plot_files(folder: Path, pngs: dict[str, bytes], log=results.warn) -> list[Path]:
    """Write each plot (``curves``, ``factor <key>``) as ``<folder>/curves.png``, ``<key>.png``, atomically, the
    same bytes the report embeds; return the files written. A file that cannot be written is warned about."""
    written, taken = [], set()
    for name, png in pngs.items():
        stem = plot_file_stem(name.removeprefix("factor "))
        while stem in taken:  # two keys the same once made file-safe
            stem += "_"
        taken.add(stem)
        path = folder / f"{stem}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            runs.write_bytes(path, png)
            written.append(path)
        except OSError as e:
            log(f"could not write {path}: {one_line(e)}")
    return written


def plot_file_stem(key: str) -> str:
    """A swept key as a file name: letters, digits and ``. _ = -`` kept, the rest ``_``; no leading dot (a hidden
    file), at most 100 characters (``optim.lr`` stays ``optim.lr``)."""
    return re.sub(r"[^A-Za-z0-9._=-]", "_", key).lstrip(".")[:100] or "factor"
