"""Comparison tables of a sweep: one cell per setting, mean ± sd over seeds, tested against the best.

:func:`compare` reads a sweep folder's ``results.jsonl`` (one row per run) through
:mod:`cnnlab.reporting.results`, never the sweep or training code, and lays a metric out the way the studies report it: rows are
the values of the first ``by`` key, columns the combinations of the others (e.g.
rows = models, columns = optimizer × learning rate). A cell shows mean ± sample sd
(n) and a 95 % Student-t interval; the best cell is starred, and cells that Welch's
t-test cannot tell apart from it (p ≥ 0.05) are marked, so a 0.4-point gap between
two seeds' worth of runs is not read as a finding. Runs that diverged are counted
and left out of the numbers, and a cell whose accuracy sits at chance level is marked
"chance" after its mean ± sd, so a number that only looks like a result is not read as one.
:func:`write_compare` writes the table as ``compare.md`` and ``compare.csv``.
"""
from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab import runs
from cnnlab.reporting import results
from cnnlab.reporting import stats
from cnnlab.config.schema import ConfigError
from cnnlab.reporting.results import CHANCE_MARGIN, at_chance, load_plan, load_results
from cnnlab.runs import Status

FINISHED = runs.SUCCEEDED  # statuses whose metrics count
MAX_PLACES = 8  # decimals of a non-percent cell at most
UNPLANNED_SHOWN = 10  # run ids named in the note on runs the current sweep file does not plan
KNOWN_METRICS = ("test.accuracy", "test.loss", "test.f1_macro", "best.val_accuracy", "best.epoch",
                 "final_train_loss", "time_s")


@dataclass
class Cell:
    values: list[float]  # the metric of each finished, non-diverged run
    total: int  # runs in the cell, whatever their status
    diverged: int
    failed: int  # failed, interrupted or not run yet
    summary: stats.Described | None = None
    p: float | None = None  # Welch's p-value against the best cell
    same_as_best: bool | None = None
    is_best: bool = False
    chance: bool = False
    pruned: int = 0  # stopped early by a sweep scheduler (Ray Tune): not in the numbers
    collapsed: int = 0  # runs at chance level in a cell that is not: in the numbers, and named beside them
    unplanned: int = 0  # runs of the folder that the current sweep file (plan.json) does not plan


@dataclass
class CompareResult:
    sweep_dir: Path
    metric: str
    row_keys: list[str]
    col_keys: list[str]
    rows: list[tuple]  # display labels of each row's values
    cols: list[tuple]
    cells: dict[tuple[tuple, tuple], Cell]
    best: tuple[tuple, tuple] | None
    higher_is_better: bool
    percent: bool  # accuracies are shown in %
    notes: list[str] = field(default_factory=list)

    def cell_text(self, cell: Cell | None) -> str:
        if cell is None or cell.total == 0:
            return "—"
        extra = []
        if cell.diverged and cell.values:
            extra.append(f"diverged {cell.diverged}/{cell.total}")
        if cell.failed:
            extra.append(f"failed {cell.failed}/{cell.total}")
        if cell.pruned:
            extra.append(f"pruned {cell.pruned}/{cell.total}")
        if cell.collapsed and not cell.chance:
            extra.append(f"at chance {cell.collapsed}/{cell.total}")
        if cell.unplanned:
            extra.append(f"† {cell.unplanned}/{cell.total}")
        if not cell.values and cell.pruned and not cell.diverged and not cell.failed:
            return f"pruned ({cell.pruned}/{cell.total})"
        if not cell.values:
            if cell.diverged:
                return f"diverged ({cell.diverged}/{cell.total})" + (f", failed {cell.failed}/{cell.total}"
                                                                      if cell.failed else "")
            return f"failed ({cell.failed}/{cell.total})"
        s = cell.summary
        places = self._places(s)
        text = (f"{self._num(s.mean, places)} ± {self._num(s.sd, places)} ({s.n})" if s.n > 1
                else f"{self._num(s.mean, places)} (1)")
        if cell.chance:
            text += " chance"  # its figures still shown: how far from 1/classes, and how spread, is worth seeing
        elif s.ci_low is not None:
            text += f" [{self._num(s.ci_low, places)}, {self._num(s.ci_high, places)}]"
        if cell.is_best:
            text = f"**{text}** ★"
        elif cell.same_as_best:
            text += " ≈"
        return text + "".join(f"; {e}" for e in extra)

    def _places(self, s: stats.Described) -> int:
        """Decimals for one cell's numbers, all alike: accuracies in % to 2; other metrics to 4 significant
        digits of the mean, more where the sd needs them for 2 of its own (1.570 ± 0.017, not 1.57 ± 0.01716)."""
        if self.percent:
            return 2
        places = [3 - math.floor(math.log10(abs(s.mean)))] if s.mean else [4]
        if s.sd:
            places.append(1 - math.floor(math.log10(s.sd)))
        return min(MAX_PLACES, max(0, *places))

    def _num(self, x: float | None, places: int = 2) -> str:
        if x is None:
            return "—"
        return f"{100 * x:.2f}" if self.percent else f"{x:.{places}f}"

    def markdown(self) -> str:
        unit = " (%)" if self.percent else ""
        corner = " \\ ".join([", ".join(self.row_keys) or "—", " × ".join(self.col_keys) or self.metric])
        head = [corner, *(" / ".join(c) or self.metric for c in self.cols)]
        lines = [f"## {self.metric}{unit} by {', '.join(self.row_keys + self.col_keys)} — {self.sweep_dir.name}", "",
                 "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in self.rows:
            cells = [self.cell_text(self.cells.get((r, c))) for c in self.cols]
            lines.append("| " + " | ".join([" / ".join(r) or "all", *cells]) + " |")
        units = [f"Units: {self.metric} in % here; compare.csv holds the same numbers as fractions of 1 (0.9712 for "
                 "97.12 %), as its unit column says."] if self.percent else []
        return "\n".join(lines + [""] + [f"- {n}" for n in self.notes + units]) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([*self.row_keys, *self.col_keys, "metric", "unit", "n", "mean", "sd", "ci95_low", "ci95_high",
                    "p_vs_best", "best", "same_as_best", "chance", "diverged", "failed", "total", "pruned",
                    "not_in_sweep_file"])
        for r in self.rows:
            for c in self.cols:
                cell = self.cells.get((r, c))
                if cell is None:
                    continue
                s = cell.summary
                w.writerow([*r, *c, self.metric, "fraction" if self.percent else "", len(cell.values),
                            *(("" if v is None else v) for v in
                              ((s.mean, s.sd, s.ci_low, s.ci_high) if s else (None,) * 4)),
                            "" if cell.p is None else cell.p, int(cell.is_best),
                            "" if cell.same_as_best is None else int(cell.same_as_best),
                            int(cell.chance), cell.diverged, cell.failed, cell.total, cell.pruned,
                            cell.unplanned])
        return buf.getvalue()


def metric_range(metric: str) -> tuple[float | None, float | None]:
    """The values a metric can take, (low, high) with None for open: accuracies and P/R/F1 in [0, 1];
    losses, times and epochs ≥ 0 (every loss cnnlab offers is); (None, None) for a metric it does not know."""
    last = metric.split(".")[-1]
    if last.endswith(("accuracy", "f1_macro", "precision_macro", "recall_macro")):
        return 0.0, 1.0
    if "loss" in last or last.startswith("time") or last.endswith("_s") or last == "epoch":
        return 0.0, None
    return None, None


def label(value: Any) -> str:
    """How a setting value is shown: null is the builder's default."""
    if value is None:
        return "default"
    return value if isinstance(value, str) else json.dumps(value)


def metric_value(row: dict, metric: str) -> float | None:
    """The row's metric as a finite float; None when missing, not a number, NaN or infinite (never a best cell)."""
    node = results.dig(row, metric)
    return results.number(node) if isinstance(node, (int, float)) else None


def compare(sweep_dir: str | Path, by: list[str] | None = None, metric: str = "test.accuracy",
            columns: list[str] | None = None, log=results.warn) -> CompareResult:
    """Group a sweep's runs by the ``by`` keys and test every cell against the best.

    Rows are the ``by`` keys not in ``columns``; ``columns`` defaults to ``by[1:]``.
    Keys are dotted config keys of the rows' ``settings`` (or ``seed``, or ``base``: the base study, also
    of a sweep of one study); ``metric`` is a dotted path into a row (test.accuracy, best.val_accuracy,
    final_train_loss, time_s...). ``by`` None or empty: the keys the sweep varies, or ``base`` when it
    varies none (one setting, several seeds: one row pooling them).
    """
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir, log=log)
    if not rows:
        raise ConfigError(f"{sweep_dir}: no results.jsonl rows; run the sweep first (cnnlab sweep FILE --out DIR)")
    notes: list[str] = []
    plan = load_plan(sweep_dir, log=log)
    by = [k.strip() for k in by or () if k.strip()] or default_by(plan, rows)
    columns = by[1:] if columns is None else list(columns)
    if set(columns) - set(by):
        raise ConfigError(f"compare: columns {sorted(set(columns) - set(by))} must be among the --by keys {by}")
    row_keys = [k for k in by if k not in columns]
    rows = _named_rows(sweep_dir, plan, rows, by)
    available = sorted({k for r in rows for k in r.get("settings", {})} | {"seed"})
    _check_by_and_metric(rows, by, metric, available)
    if plan and plan.get("ofat"):
        rows = _at_the_base_case(sweep_dir, plan, rows, by, available, notes)
    planned = {r["run_id"] for r in plan["runs"]} if plan else None
    unplanned = [r for r in rows if planned is not None and r["run_id"] not in planned]

    order = _value_order(plan, rows, by)
    grouped: dict[tuple[tuple, tuple], list[dict]] = {}
    for r in rows:
        grouped.setdefault((_key_of(r, row_keys), _key_of(r, columns)), []).append(r)
    notes += _pooled_note(grouped, available, by)
    percent = metric.endswith("accuracy")
    higher_is_better = not ("loss" in metric or metric.startswith("time"))
    classes = results.num_classes(sweep_dir, rows)
    bounds = metric_range(metric)
    cells = {key: _cell(members, metric, unplanned, classes, bounds, percent) for key, members in grouped.items()}
    best = _mark_best(cells, higher_is_better)
    result = CompareResult(sweep_dir, metric, row_keys, columns, _sort(order, row_keys, {k[0] for k in grouped}),
                           _sort(order, columns, {k[1] for k in grouped}), cells, best, higher_is_better, percent)
    result.notes = _head_notes(result) + notes + _legend(result, bounds, classes) \
        + _plan_notes(plan, by, unplanned)
    return result


def _value(row: dict, key: str) -> Any:
    """A row's value of a --by key: its seed, or one of its settings (None when it does not set the key)."""
    return row["seed"] if key == "seed" else row.get("settings", {}).get(key)


def _key_of(row: dict, keys: list[str]) -> tuple:
    return tuple(label(_value(row, k)) for k in keys)


def _sort(order: dict[str, dict[str, int]], keys: list[str], items: set[tuple]) -> list[tuple]:
    return sorted(items, key=lambda t: [order[k][v] for k, v in zip(keys, t)])


def _named_rows(sweep_dir: Path, plan: dict | None, rows: list[dict], by: list[str]) -> list[dict]:
    """The rows with every key the folder's runs vary in their settings, and ``base`` where --by asks for it."""
    # Every finished run of the folder counts, also those a different sweep file (a subset, an older
    # version) wrote: each row names every key the folder's runs vary (read from its run's config where
    # its sweep file did not vary the key), so it joins the runs of the same settings.
    keys = list(dict.fromkeys([*(plan or {}).get("keys", []), *(k for r in rows for k in r["settings"])]))
    rows = results.fill_settings(sweep_dir, rows, keys)
    if "base" in by and not any("base" in r["settings"] for r in rows):
        # a sweep of one base study names no base in its rows: each run's base is the study it was built from
        rows = [{**r, "settings": {**r["settings"], "base": study_name(sweep_dir, r)}} for r in rows]
    return rows


def _check_by_and_metric(rows: list[dict], by: list[str], metric: str, available: list[str]) -> None:
    for k in by:
        if k not in available:
            choices = ", ".join(sorted({*available, "base"}))
            raise ConfigError(f"compare: --by {k} is not a setting of this sweep; choose from {choices}")
    if not any(metric_value(r, metric) is not None for r in rows) and metric not in KNOWN_METRICS:
        raise ConfigError(f"compare: --metric {metric} is not in the results rows; use one of {', '.join(KNOWN_METRICS)}")


def _at_the_base_case(sweep_dir: Path, plan: dict, rows: list[dict], by: list[str], available: list[str],
                      notes: list[str]) -> list[dict]:
    """A one-factor-at-a-time sweep: the runs whose other factors sit at the base case (notes say so, and name
    the runs that differ from it in more than one factor)."""
    # Keys in the same zip group as a --by key change with it, so they belong to that factor rather than to
    # the "others".
    together = {k for group in plan.get("factors", []) if set(group) & set(by) for k in group}
    base = results.base_settings(sweep_dir, plan, [k for k in available if k != "seed"], rows)
    others = [k for k in available if k not in by and k not in together and k != "seed" and k in base]
    kept = [r for r in rows if all(_value(r, k) == base[k] for k in others)]
    notes.append("One factor at a time: each cell holds the runs whose other factors are at the base case.")
    groups = [set(g) for g in plan.get("factors", [])]
    apart = [r for r in rows if len({next((i for i, g in enumerate(groups) if k in g), k) for k in others
                                     if _value(r, k) != base[k]}) > 1]
    if apart:
        who = ("1 run differs from the base case in more than one factor and is" if len(apart) == 1 else
               f"{len(apart)} runs differ from the base case in more than one factor and are")
        notes.append(f"{who} in no one-factor table (an earlier sweep file's): give those factors together in "
                     f"--by to see {'it' if len(apart) == 1 else 'them'}.")
    return kept


def _value_order(plan: dict | None, rows: list[dict], by: list[str]) -> dict[str, dict[str, int]]:
    """Each --by key's labels in display order: numbers sorted; other values in the order the sweep file gives
    them (its plan)."""
    order_source = [{"settings": r["settings"], "seed": r["seed"]} for r in plan["runs"]] if plan else rows
    order: dict[str, dict[str, int]] = {}
    for k in by:
        # (planned runs of a sweep file that does not vary k say nothing about its order; a row that cannot
        # name its value, null, reads "default" after the numbers)
        values = [_value(r, k) for r in order_source if k == "seed" or k in r["settings"]]
        values += [_value(r, k) for r in rows]
        numbers = [v for v in values if v is not None]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
            values = sorted(numbers) + [None] * (len(values) - len(numbers))
        order[k] = {}
        for v in values:
            order[k].setdefault(label(v), len(order[k]))
    return order


def _pooled_note(grouped: dict[tuple[tuple, tuple], list[dict]], available: list[str], by: list[str]) -> list[str]:
    pooled = [k for k in available if k not in by and k != "seed" and any(
        len({json.dumps(_value(r, k), sort_keys=True) for r in members}) > 1 for members in grouped.values())]
    if not pooled:
        return []
    return [f"Cells pool runs that differ in {', '.join(pooled)}: add {'it' if len(pooled) == 1 else 'them'} "
            "to --by to separate them."]


def _cell(members: list[dict], metric: str, unplanned: list[dict], classes: int | None,
          bounds: tuple[float | None, float | None], percent: bool) -> Cell:
    """One cell: its finished runs' metric described, and its runs counted by status."""
    values = [metric_value(r, metric) for r in members if r.get("status") in FINISHED]
    values = [v for v in values if v is not None]
    diverged = sum(r.get("status") == Status.DIVERGED for r in members)
    pruned = sum(r.get("status") == Status.PRUNED for r in members)
    cell = Cell(values, len(members), diverged, len(members) - diverged - pruned - len(values), pruned=pruned,
                unplanned=sum(r in unplanned for r in members))
    if values:
        cell.summary = stats.describe(values, bounds=bounds)
        cell.chance = percent and at_chance(cell.summary.mean, classes)
        cell.collapsed = sum(at_chance(v, classes) for v in values) if percent else 0
    return cell


def _mark_best(cells: dict[tuple[tuple, tuple], Cell], higher_is_better: bool) -> tuple[tuple, tuple] | None:
    """Star the best cell and test every other against it; returns the best cell's key."""
    # A chance-level cell is never the best, but it is tested against it like any other cell.
    best = stats.best_key({k: c.values for k, c in cells.items() if c.values and not c.chance}, higher_is_better)
    if best is None:
        return None
    cells[best].is_best = True
    with warnings.catch_warnings():
        # A cell of one accuracy on every seed (11.35 % at chance) has a variance of float rounding
        # noise: scipy warns of precision loss, yet the test is decided by the other cell's spread.
        warnings.filterwarnings("ignore", message="Precision loss occurred", category=RuntimeWarning)
        versus_best = stats.against_best({k: c.values for k, c in cells.items() if c.values}, best)
    for k, versus in versus_best.items():
        cells[k].p, cells[k].same_as_best = versus.p, versus.same_as_best
    return best


def _head_notes(result: CompareResult) -> list[str]:
    """What a cell shows, and what ★ and ≈ mean."""
    what = "test accuracy" if result.metric == "test.accuracy" else result.metric
    head = [f"Cells: mean ± sample sd (number of runs) [95 % CI of the mean, Student t] of {what}"
            + (" in %" if result.percent else "") + "."]
    if result.best is not None:
        head.append(f"★ best cell ({'highest' if result.higher_is_better else 'lowest'} mean).")
    if any(c.p is not None for c in result.cells.values()):
        head.append(f"≈ not significantly different from the best: Welch's t-test (two-sided, unequal variances), "
                    f"p ≥ {stats.ALPHA}; unmarked cells with 2 or more runs differ from the best at p < {stats.ALPHA}.")
    return head


def _legend(result: CompareResult, bounds: tuple[float | None, float | None], classes: int | None) -> list[str]:
    """A note for each mark that some cell of the table carries (cut interval, single runs, diverged...)."""
    cells, percent = list(result.cells.values()), result.percent
    notes = []
    if any(c.summary and c.summary.clipped for c in cells):
        lo, hi = bounds
        limits = f"{_shown_limit(lo, percent)} … {_shown_limit(hi, percent)}" if hi is not None \
            else f"≥ {_shown_limit(lo, percent)}"
        notes.append(f"An interval that reached past the values {result.metric} can take ({limits}) is cut there: "
                     "with few runs a Student-t interval can, the true mean cannot.")
    ns = [c.summary.n for c in cells if c.summary]
    if ns and max(ns) < 2:
        notes.append("One run per cell (a single seed): no confidence intervals, and the differences between cells "
                     "are untested; run the sweep with seeds: 3 or more before reading a difference as real.")
    elif ns and min(ns) < 2:
        notes.append("Cells with a single run have no interval and are not tested against the best.")
    if any(c.diverged for c in cells):
        notes.append("diverged k/n: k of the cell's n runs diverged (the loss became non-finite); they are left out "
                     "of the numbers.")
    if any(c.chance for c in cells):
        notes.append(f"chance: mean accuracy within {100 * CHANCE_MARGIN:.0f} points of 1/classes "
                     f"({100 * results.chance_level(classes):.0f} % for {classes} classes): the network did not learn.")
    if any(c.collapsed and not c.chance for c in cells):
        notes.append("at chance k/n: k of the cell's n runs ended at chance level (they did not learn); they are in "
                     "the numbers, which is why the spread is wide: read the cell's runs, not only its mean.")
    if any(c.pruned for c in cells):
        notes.append("pruned k/n: k of the cell's n runs were stopped early by the sweep's scheduler (Ray Tune); "
                     "they are left out of the numbers.")
    if any(c.failed for c in cells):
        notes.append("failed k/n: runs that crashed, were interrupted or have not run yet (re-run the sweep).")
    return notes


def _plan_notes(plan: dict | None, by: list[str], unplanned: list[dict]) -> list[str]:
    """Notes from the sweep's plan: settings equal to a model's default, runs the current sweep file does not plan."""
    notes = []
    folds = (plan or {}).get("folds")
    if isinstance(folds, int) and "seed" not in by:
        notes.append(f"Cross-validation: each cell pools its runs over {folds} folds × seeds (a run validates on one "
                     f"fold of the training pool and trains on the other {folds - 1}; every run is tested on the same, "
                     "untouched test split), so its sd is the spread over folds and seeds.")
    for entry in (plan or {}).get("same_as_default") or []:
        if isinstance(entry, dict) and entry.get("key") in by:
            value = label(entry.get("value"))
            notes.append(f"{entry['key']} {value} is model {entry.get('model')}'s own default, so its runs train the "
                         f"same network as those of \"default\" (the setting left null): two rows, one setting.")
    if unplanned:
        shown = ", ".join(f"{r['run_id']} (seed {r['seed']})" for r in unplanned[:UNPLANNED_SHOWN])
        more = f" and {len(unplanned) - UNPLANNED_SHOWN} more" if len(unplanned) > UNPLANNED_SHOWN else ""
        notes.append(f"† k/n: k of the cell's n runs are not in the current sweep file ({plan.get('source') or 'plan.json'}): "
                     f"an earlier sweep file run into this folder wrote "
                     f"{'it, and it counts' if len(unplanned) == 1 else 'them, and they count'} like the others: "
                     f"{shown}{more}.")
    return notes


def default_by(plan: dict | None, rows: list[dict]) -> list[str]:
    """The keys a compare without --by groups by: those the sweep varies, else ``base`` (one row of all seeds)."""
    keys = (plan or {}).get("keys") or list(dict.fromkeys(k for r in rows for k in r["settings"]))
    return list(keys) or ["base"]


def study_name(sweep_dir: Path, row: dict) -> str:
    """The name of the study a run was built from (its config's ``name``: the base file's stem unless the file
    names itself), or "base" when its config cannot be read."""
    name = (results.run_config(sweep_dir, row) or {}).get("name")
    return name if isinstance(name, str) and name else "base"


def _shown_limit(x: float, percent: bool) -> str:
    return f"{100 * x:g} %" if percent else f"{x:g}"


def write_compare(sweep_dir: str | Path, by: list[str], metric: str = "test.accuracy",
                  columns: list[str] | None = None, log=results.warn) -> str:
    """Write compare.md and compare.csv into the sweep folder; returns the Markdown to print."""
    result = compare(sweep_dir, by, metric, columns, log=log)
    text = result.markdown()
    runs.write_text(Path(sweep_dir) / "compare.md", text)
    runs.write_text(Path(sweep_dir) / "compare.csv", result.csv())
    return text
