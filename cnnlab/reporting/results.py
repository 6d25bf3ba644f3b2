"""Run results as the reporting side reads them: statuses, the results row, safe readers.

The row a sweep appends to
``results.jsonl`` for each run (:func:`row_from_summary`), forgiving readers of a
sweep folder (``results.jsonl`` with the last row per run winning, ``plan.json``) and
and the one chance-level rule
(:func:`at_chance`) that both ``compare`` and the run doctor apply. Comparison and
reports read results through this module only: it imports no training, sweep or
plotting code, so reading results costs no more than reading JSON.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from cnnlab import runs
from cnnlab.runs import Status, read_summary

RESULTS = "results.jsonl"  # a sweep folder's one row per run (append-only)
PLAN = "plan.json"  # a sweep folder's planned runs


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


def dig(tree: Any, dotted: str) -> Any:
    """``tree["a"]["b"]`` for ``"a.b"``; None where a level is missing or not a dict (a row's ``test.accuracy``)."""
    for part in dotted.split("."):
        if not isinstance(tree, dict):
            return None
        tree = tree.get(part)
    return tree


def number(v: Any, finite: bool = True) -> float | None:
    """A float, or None for missing, non-numbers and booleans; with ``finite`` also None for NaN, infinities and
    their strings (older run folders wrote non-finite values as "nan" / "inf"). The one metric coercer."""
    if v is None or isinstance(v, bool):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) or not finite else None


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
        "threads": cpu_threads(summary),
    }


def cpu_threads(summary: dict) -> int | None:
    """The CPU threads a run computed with (summary.json env), when it ran on the CPU: results there depend on it
    (floating-point sums are split differently); None for a GPU run or when not recorded."""
    env = summary.get("env") if isinstance(summary.get("env"), dict) else {}
    threads = env.get("cpu_threads")
    on_cpu = str(env.get("device", "")).startswith("cpu")
    return threads if on_cpu and isinstance(threads, int) and not isinstance(threads, bool) else None


def append_row(path: str | Path, row: dict) -> None:
    """Append one results row (locked, one write; non-finite numbers as null)."""
    runs.append_jsonl(Path(path), row)


def warn(message: str) -> None:
    """The default ``log`` of the readers below: one line on stderr (the report and the table still follow)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


# A results row: the fields every reader needs, with the types they must have; others are optional.
ROW_FIELDS = {"run_id": (str,), "settings": (dict,), "seed": (int,), "status": (str,)}
OPTIONAL_ROW_FIELDS = {"test": (dict,), "best": (dict,), "run_dir": (str,), "error": (str,),
                       "time_s": (int, float), "final_train_loss": (int, float), "threads": (int,)}


def row_problem(row: Any) -> str | None:
    """Why a results.jsonl row cannot be used (None when it can): not a mapping, a missing or mistyped field."""
    if not isinstance(row, dict):
        return f"the row is a JSON {type(row).__name__}, not an object"
    for key, types in ROW_FIELDS.items():
        if key not in row:
            return f"the row has no {key!r}"
        v = row[key]
        if isinstance(v, bool) or not isinstance(v, types):
            return f"{key!r} is a {type(v).__name__}, not a {'/'.join(t.__name__ for t in types)}"
    if not row["run_id"]:
        return "'run_id' is empty"
    for key, types in OPTIONAL_ROW_FIELDS.items():
        v = row.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, types)):
            return f"{key!r} is a {type(v).__name__}, not a {'/'.join(t.__name__ for t in types)} or null"
    if any(not isinstance(k, str) for k in row["settings"]):
        return "'settings' has a key that is not text"
    return None


def load_results(sweep_dir: str | Path, log: Callable[[str], None] | None = warn) -> list[dict]:
    """One row per run_id (the last usable one written wins), in order of each run's first row.

    A line that is not JSON, or a row that is not usable (:func:`row_problem`), is skipped and
    reported through ``log`` with the file and line number, so it never displaces a run's good row.
    A torn last line (no newline: a writer killed mid-line) is skipped silently."""
    path = Path(sweep_dir) / RESULTS
    rows: dict[str, dict] = {}
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as e:
        if log:
            log(f"{path}: cannot be read ({e.strerror or e}); no results")
        return []
    lines = text.split("\n")
    for number_, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            if number_ == len(lines):  # the last line without a newline: torn by a kill, skipped silently
                continue
            if log:
                log(f"{path} line {number_}: not valid JSON; line skipped")
            continue
        problem = row_problem(row)
        if problem:
            if log:
                log(f"{path} line {number_}: {problem}; row skipped")
            continue
        rows[row["run_id"]] = row
    return list(rows.values())


def run_dir_of(sweep_dir: str | Path, row: dict) -> tuple[Path | None, str | None]:
    """A row's run folder when it lies inside the sweep folder: ``(path, None)``; else ``(None, why)``.

    ``run_dir`` must be a relative path that stays inside the sweep folder once resolved (no
    scheme, no absolute path, no ``..`` escape, no symlink out). A row without one gives (None, None)."""
    rd = row.get("run_dir")
    if rd is None:
        return None, None
    if not isinstance(rd, str) or not rd.strip() or "\x00" in rd:
        return None, f"run_dir {rd!r} is not a folder name"
    if "\\" in rd or ":" in rd.split("/")[0] or Path(rd).is_absolute():
        return None, f"run_dir {rd!r} is not a relative path inside the sweep folder"
    root = Path(sweep_dir).resolve()
    try:
        target = (root / rd).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name too long
        return None, f"run_dir {rd!r} cannot be resolved"
    if target == root or root not in target.parents:
        return None, f"run_dir {rd!r} points outside the sweep folder {root}"
    return target, None


def load_plan(sweep_dir: str | Path, log: Callable[[str], None] | None = warn) -> dict | None:
    """The sweep's plan.json (swept keys, factors, ofat, base settings, runs), or None when absent or unusable."""
    path = Path(sweep_dir) / PLAN
    if not path.exists():
        return None
    try:
        plan = runs.read_json(path)
    except (OSError, ValueError) as e:
        if log:
            log(f"{path}: not readable JSON ({type(e).__name__}); the plan is ignored")
        return None
    problem = None
    if not isinstance(plan, dict):
        problem = f"a JSON {type(plan).__name__}, not an object"
    elif not isinstance(plan.get("runs", []), list) or any(
            not isinstance(r, dict) or not isinstance(r.get("run_id"), str) or not isinstance(r.get("settings"), dict)
            or not isinstance(r.get("seed"), int) for r in plan.get("runs", [])):
        problem = "'runs' is not a list of {run_id, settings, seed}"
    elif not isinstance(plan.get("keys", []), list) or not isinstance(plan.get("base_settings", {}), dict) \
            or not all(isinstance(k, str) for k in plan.get("keys", [])) \
            or not isinstance(plan.get("factors", []), list) or not all(
                isinstance(g, list) and all(isinstance(k, str) for k in g) for g in plan.get("factors", [])):
        problem = "'keys', 'factors' or 'base_settings' has the wrong type"
    if problem:
        if log:
            log(f"{path}: {problem}; the plan is ignored")
        return None
    plan.setdefault("runs", [])
    return plan


_MISSING = object()


def _at(config: Any, dotted: str) -> Any:
    """The value at a dotted key of a nested mapping; _MISSING when the path does not exist."""
    for part in dotted.split("."):
        if not isinstance(config, dict) or part not in config:
            return _MISSING
        config = config[part]
    return config


def run_config(sweep_dir: str | Path, row: dict) -> dict | None:
    """The config a row's run trained with: its summary.json's ``config``, else its config.yaml; None when
    the run folder (checked to lie inside the sweep folder) holds neither in readable form."""
    run_dir, _ = run_dir_of(sweep_dir, row)
    if run_dir is None:
        return None
    config = (read_summary(run_dir) or {}).get("config")
    if isinstance(config, dict):
        return config
    try:
        config = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return config if isinstance(config, dict) else None


# what a reader asks first of a sweep's runs besides the swept keys: shown whenever every run shares it
ESSENTIAL_KEYS = ("data.name", "data.root", "data.train_limit", "data.resize", "model.name", "optim.name", "optim.lr",
                  "sched.name", "train.epochs", "train.batch_size", "train.precision")
# a run's identity or its display, not what it was trained with
NOT_SETTINGS = ("name", "seed", "train.progress", "train.mlflow", "train.tensorboard", "train.sweep.", "train.device",
                "train.threads", "train.eval_batch_size")


def held_fixed(sweep_dir: str | Path, rows: list[dict], swept: list[str]) -> list[tuple[str, Any]]:
    """The settings every run of the sweep shares, besides the ``swept`` keys: (dotted key, value) for each of
    :data:`ESSENTIAL_KEYS` (the data, the model, the epochs...) and every other value that is not the default,
    read from the runs' configs. Keys some runs lack or hold differently are left out, and unset ones (null: the
    default, e.g. data.root from $CNNLAB_DATA); none without configs."""
    from cnnlab.config.schema import Config, flatten  # the defaults, only for a report

    configs = [flatten(c, keep_empty=False) for c in (run_config(sweep_dir, r) for r in rows) if c is not None]
    if not configs:
        return []
    defaults = flatten(Config().to_dict(), keep_empty=False)
    shared = {k: v for k, v in configs[0].items() if all(k in c and c[k] == v for c in configs[1:])}
    keep = [k for k in ESSENTIAL_KEYS if k in shared] + sorted(
        k for k, v in shared.items() if k not in ESSENTIAL_KEYS and defaults.get(k, _MISSING) != v)
    def shown(v: Any) -> Any:  # 1.0 epochs as 1
        return int(v) if isinstance(v, float) and v.is_integer() else v

    return [(k, shown(shared[k])) for k in keep
            if k not in swept and not k.startswith(NOT_SETTINGS) and shared[k] is not None]


def fill_settings(sweep_dir: str | Path, rows: list[dict], keys: list[str]) -> list[dict]:
    """The rows, each naming every one of ``keys``: a key missing from a row's ``settings`` is read from its
    run's config (left missing when that cannot be read).

    A sweep file that varies fewer keys than one run earlier into the same folder (a shortened copy, a
    re-run of some axes) writes rows that name only its own keys; filled in, rows from both group alike."""
    out = []
    for r in rows:
        missing = [k for k in keys if k not in r["settings"]]
        config = run_config(sweep_dir, r) if missing else None
        if config is not None:
            found = {k: v for k in missing if (v := _at(config, k)) is not _MISSING}
            r = {**r, "settings": {**r["settings"], **found}}
        out.append(r)
    return out


def base_settings(sweep_dir: str | Path, plan: dict, keys: list[str], rows: list[dict] = ()) -> dict:
    """The base case's value of each of ``keys`` that can be known: the plan's ``base_settings``, and for a
    key the current sweep file does not vary, its value in a planned run (all of them hold the base's value):
    from that run's config, else from a planned run's results row (``rows``) that names it."""
    base = dict(plan.get("base_settings") or {})
    others = [k for k in keys if k not in base]
    if not others:
        return base
    planned = {r.get("run_id") for r in plan.get("runs") or []}
    for r in [r for r in rows if r["run_id"] in planned]:
        for k in others:
            if k not in base and k in r["settings"]:
                base[k] = r["settings"][k]
    for r in plan.get("runs") or []:
        if all(k in base for k in others):
            break
        config = run_config(sweep_dir, r)
        for k in others:
            if k not in base and config is not None and (v := _at(config, k)) is not _MISSING:
                base[k] = v
    return base


def num_classes(sweep_dir: str | Path, rows: list[dict], default: int = 10) -> int:
    """The class count from the first run summary that names its classes (``default`` when none does)."""
    for r in rows:
        run_dir, _ = run_dir_of(sweep_dir, r)
        summary = read_summary(run_dir) if run_dir else None
        if summary and isinstance(summary.get("classes"), list) and len(summary["classes"]) >= 2:
            return len(summary["classes"])
    return default
