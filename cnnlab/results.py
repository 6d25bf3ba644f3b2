"""Run results as the reporting side reads them: statuses, the results row, safe readers.

One vocabulary for how a run ended (:class:`Status`), the row a sweep appends to
``results.jsonl`` for each run (:func:`row_from_summary`), forgiving readers of a
sweep folder (``results.jsonl`` with the last row per run winning, ``plan.json``) and
of a run folder (``summary.json``, ``metrics.jsonl``), and the one chance-level rule
(:func:`at_chance`) that both ``compare`` and the run doctor apply. Comparison and
reports read results through this module only: it imports no training, sweep or
plotting code, so reading results costs no more than reading JSON.
"""
from __future__ import annotations

import enum
import math
from pathlib import Path
from typing import Any

from cnnlab import runs

RESULTS = "results.jsonl"  # a sweep folder's one row per run (append-only)
PLAN = "plan.json"  # a sweep folder's planned runs


class Status(enum.StrEnum):
    """How a run ended (``summary.json`` / results rows), plus the two states of rows not run yet."""

    COMPLETED = "completed"  # trained for the planned steps
    EARLY_STOPPED = "early_stopped"  # stopped by early stopping: a normal, finished run
    DIVERGED = "diverged"  # the loss became non-finite: finished, with no usable result
    INTERRUPTED = "interrupted"  # SIGINT/SIGTERM: last.pt kept, resumable
    FAILED = "failed"  # an error: a sweep runs it again
    PENDING = "pending"  # a planned run with no row yet (sweep tables)
    PLANNED = "planned"  # a dry run's rows


FINAL_STATUSES = (Status.COMPLETED, Status.EARLY_STOPPED, Status.DIVERGED)  # a sweep does not run these again
SUCCEEDED = (Status.COMPLETED, Status.EARLY_STOPPED)  # metrics that count; the CLI exits 0


def succeeded(status: Any) -> bool:
    return status in SUCCEEDED


def is_final(status: Any) -> bool:
    return status in FINAL_STATUSES


# ----------------------------------------------------------------------------- chance level

# Accuracy within this of 1/classes is "at chance": the network learned nothing. Compare marks
# such cells "chance" (and never best); the doctor raises stuck_at_chance.
CHANCE_MARGIN = 0.05


def chance_level(num_classes: int) -> float:
    return 1.0 / num_classes


def at_chance(accuracy: float | None, num_classes: int | None) -> bool:
    """True when ``accuracy`` (0..1) lies within CHANCE_MARGIN of 1/num_classes."""
    if accuracy is None or not num_classes or num_classes < 2 or not math.isfinite(accuracy):
        return False
    return abs(accuracy - chance_level(num_classes)) <= CHANCE_MARGIN + 1e-12


# ----------------------------------------------------------------------------- numbers


def number(v: Any) -> float | None:
    """A finite float, or None for missing, non-numbers, booleans, NaN, infinities and their strings."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)  # older run folders wrote non-finite values as "nan" / "inf"
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


# ----------------------------------------------------------------------------- run folders


def read_summary(run_dir: str | Path) -> dict | None:
    """A run folder's summary.json as a dict, or None when it is missing, torn or not a mapping."""
    try:
        data = runs.read_json(Path(run_dir) / "summary.json")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """A run folder's metrics.jsonl rows (a torn last line is skipped)."""
    return [r for r in runs.read_jsonl(Path(run_dir) / "metrics.jsonl") if isinstance(r, dict)]


def is_finished(run_dir: str | Path) -> bool:
    """True when the run folder's summary.json holds a final status."""
    summary = read_summary(run_dir)
    return bool(summary) and is_final(summary.get("status"))


# ----------------------------------------------------------------------------- sweep folders


def row_from_summary(run: dict, summary: dict, error: str | None = None, time_s: float | None = None) -> dict:
    """The results.jsonl row of a run (``run`` has run_id, settings, seed, run_dir)."""
    test = summary.get("test") or {}
    best = summary.get("best") or {}
    return {
        "run_id": run["run_id"],
        "settings": run["settings"],
        "seed": run["seed"],
        "status": str(summary.get("status", Status.FAILED)),
        "test": {k: number(test.get(k)) for k in ("accuracy", "loss", "f1_macro")},
        "best": {"val_accuracy": number(best.get("val_accuracy")), "epoch": number(best.get("epoch"))},
        "final_train_loss": number(summary.get("final_train_loss")),
        "time_s": number((summary.get("time") or {}).get("total_s")) if time_s is None else round(time_s, 3),
        "run_dir": run["run_dir"],
        "error": error or summary.get("error"),
    }


def append_row(path: str | Path, row: dict) -> None:
    """Append one results row (locked, one write; non-finite numbers as null)."""
    runs.append_jsonl(Path(path), row)


def load_results(sweep_dir: str | Path) -> list[dict]:
    """One row per run_id (the last one written wins), in order of each run's first row."""
    rows: dict[str, dict] = {}
    for row in runs.read_jsonl(Path(sweep_dir) / RESULTS):
        if isinstance(row, dict) and "run_id" in row:
            rows[row["run_id"]] = row
    return list(rows.values())


def load_plan(sweep_dir: str | Path) -> dict | None:
    """The sweep's plan.json (swept keys, factors, ofat, base settings, runs), or None when absent."""
    path = Path(sweep_dir) / PLAN
    return runs.read_json(path) if path.exists() else None


def num_classes(sweep_dir: str | Path, rows: list[dict], default: int = 10) -> int:
    """The class count from the first run summary that names its classes (``default`` when none does)."""
    for r in rows:
        summary = read_summary(Path(sweep_dir) / str(r.get("run_dir", "")))
        if summary and summary.get("classes"):
            return len(summary["classes"])
    return default
