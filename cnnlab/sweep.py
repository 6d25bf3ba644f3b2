"""Sweeps: one YAML file → many study configs × seeds → run folders and ``results.jsonl``.

A sweep file names a ``base`` study (a path relative to the sweep file, an inline
mapping, or a list of either to compare whole studies), the ``axes`` to vary (each a
dotted config key with a list of values), ``zip`` groups of keys whose values change
together, an optional ``random`` search space, and ``seeds`` (a count or a list).
Axes form a grid by default; ``ofat: true`` varies one factor at a time from the base
case instead. Every config is built and validated before anything runs, so a typo
costs seconds, not the hours of the runs before it. Each run gets an id that is a
hash of its resolved config and seed, so re-running a sweep skips finished runs,
resumes interrupted ones from ``last.pt`` and re-runs failed ones. Runs execute one
after another in this process, in ``workers`` spawned processes (each writes its own row to
``results.jsonl``), or as Ray Tune trials (:mod:`cnnlab.sweep_ray`: the driver writes their rows). A sweep
file may also ask Ray for ``resources`` per run, a ``scheduler`` (ASHA, median stopping) and a ``search``
(Optuna over axes given as ranges); those need ``--executor ray``. A sweep file that re-runs a study may
also carry its ``claims`` (:mod:`cnnlab.claims`, checked at load against the planned cells) and say in
``cut`` how its schedule was shortened from the study's; both go into ``plan.json``.

The results file is append-only: a re-run of a failed run appends a new row, and
readers (:func:`cnnlab.results.load_results`) keep the last row per ``run_id``.
Rows are appended through :func:`cnnlab.runs.append_jsonl` (exclusive ``flock``,
one ``O_APPEND`` write), so concurrent writers (workers) never
interleave or lose lines. Each run is finished as every run is (:mod:`cnnlab.lifecycle`):
the doctor's findings, ``curves.png`` and the uploads (the runs' report.html pages are built
by ``cnnlab report SWEEP_DIR``).
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import os
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from cnnlab import runs
from cnnlab.claims import Layout, check_cells, parse_claims
from cnnlab.config import Config, ConfigError, apply_overrides, check_name, name_problem, read_yaml
from cnnlab.loader import build_config
from cnnlab.registry import MODELS
from cnnlab.sweep_ray import check_range, check_resources, check_scheduler, check_search
from cnnlab.sweep_exec import ID_LENGTH, RUN_LOCK_WAIT_S, execute_task, run_id  # noqa: F401 - re-exported
from cnnlab.results import (FINAL_STATUSES, PLAN, RESULTS, Status, append_row, load_plan,  # noqa: F401 - re-exported
                            at_chance, load_results, num_classes, read_summary, row_from_summary, warn)

SWEEP_KEYS = ("description", "base", "axes", "zip", "ofat", "random", "seeds", "resources", "scheduler", "search",
              "claims", "cut")
SWEEP_LOCK = ".sweep.lock"  # in the sweep folder: one sweep command writes it at a time


# ----------------------------------------------------------------------------- the plan


@dataclass
class PlannedRun:
    run_id: str
    settings: dict[str, Any]  # the swept keys' values in this run ("base" names the base study)
    seed: int
    config: Config

    @property
    def run_dir(self) -> str:
        return f"runs/{self.run_id}"


@dataclass
class Sweep:
    name: str  # the sweep file's stem; the default output folder is sweeps/<name>
    source: str
    keys: list[str]  # swept keys, in the file's order
    factors: list[list[str]]  # keys that vary together (an axis: one key; a zip group: several)
    ofat: bool
    base_settings: dict[str, Any]  # the base case's values of the swept keys
    runs: list[PlannedRun]  # a search's runs are not known in advance: empty (its plan.json lists the rows so far)
    resources: dict = field(default_factory=dict)  # what one run asks Ray for ({cpu: N, gpu: G})
    scheduler: dict | None = None  # Ray Tune's ASHA or median stopping (cnnlab.sweep_ray.check_scheduler)
    search: dict | None = None  # Ray Tune's Optuna searcher (cnnlab.sweep_ray.check_search)
    space: dict = field(default_factory=dict)  # a search's axes: {key: [values] | {loguniform: [lo, hi]} ...}
    base: dict = field(default_factory=dict)  # a search's study mapping, each sampled run built from it
    seed: int = 0  # a search's runs' seed
    # swept model options whose value is the builder's own default next to a run leaving them null (same_as_default)
    same_as_default: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)  # the study's claims as the file gives them (cnnlab.claims)
    cut: str | None = None  # how the schedule was shortened from the study's, in words; None: the study's own

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "keys": self.keys, "factors": self.factors,
                "ofat": self.ofat,
                "base_settings": self.base_settings,
                "runs": [_run_info(r) for r in self.runs],
                **({"search": self.search, "space": self.space} if self.search else {}),
                **({"scheduler": self.scheduler} if self.scheduler else {}),
                **({"same_as_default": self.same_as_default} if self.same_as_default else {}),
                **({"claims": self.claims} if self.claims else {}),
                **({"cut": self.cut} if self.cut else {})}


@dataclass
class _Factor:
    """One thing that varies: an axis, a zip group, the random samples, or the base study."""

    label: str  # how errors and the plan name it: "optim.lr", "zip(optim.name, optim.momentum)"
    keys: list[str]
    choices: list[dict[str, Any]]  # each a {dotted key: value} override


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file into its full list of runs (nothing is run or written)."""
    path = Path(path)
    return plan_sweep(read_yaml(path), base_dir=path.parent, name=path.stem, source=str(path))


def plan_sweep(spec: dict, base_dir: str | Path = ".", name: str = "sweep", source: str = "sweep") -> Sweep:
    """Expand a sweep mapping into validated runs; raises ConfigError naming the axis and value."""
    unknown = [k for k in spec if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"{source}: unknown sweep key(s) {', '.join(map(str, unknown))}; "
                          f"a sweep file has: {', '.join(SWEEP_KEYS)}")
    if "base" not in spec:
        raise ConfigError(f"{source}: 'base' is missing: a study file path (relative to the sweep file) "
                          "or an inline study mapping")
    bases = _read_bases(spec["base"], Path(base_dir), name, source)
    tune_blocks = {"resources": check_resources(spec.get("resources"), source),
                   "scheduler": check_scheduler(spec.get("scheduler"), source)}
    search = check_search(spec.get("search"), source)
    cut = spec.get("cut")
    if cut is not None and (not isinstance(cut, str) or not cut.strip()):
        raise ConfigError(f"{source}: cut must say in words how the schedule was shortened from the study's "
                          f"(e.g. \"1 epoch over 2,000 images instead of 200 epochs\"), got {cut!r}")
    claims = parse_claims(spec.get("claims"), source)
    if search:
        if claims:
            raise ConfigError(f"{source}: claims name cells of a grid or one-factor-at-a-time sweep; a search samples "
                              "its settings, so it has no cells to name (drop claims: or the search:)")
        return _plan_search(spec, bases, search, tune_blocks, (name, source))
    factors = _factors(spec, source)
    if len(bases) > 1:
        factors.insert(0, _Factor("base", ["base"], [{"base": label} for label in bases]))
    keys = list(dict.fromkeys(k for f in factors for k in f.keys))
    ofat = spec.get("ofat", False)
    if not isinstance(ofat, bool):
        raise ConfigError(f"{source}: ofat must be true or false, got {ofat!r}")
    first_label = next(iter(bases))
    seeds = _seeds(spec.get("seeds"), bases[first_label].get("seed", 0), source)

    if ofat:  # the base case once, then each factor's values alone
        combos = [()] + [(c,) for f in factors for c in f.choices]
    else:
        combos = list(itertools.product(*(f.choices for f in factors)))

    settings_runs: list[tuple[dict, Config]] = []
    for combo in combos:
        overrides = {k: v for choice in combo for k, v in choice.items()}
        cfg = _build(bases, overrides, combo, factors, source)
        settings_runs.append((_settings_of(cfg, keys, overrides.get("base", first_label)), cfg))

    planned, seen = [], set()
    for seed in seeds:  # seeds outermost: a partial sweep already covers every cell once
        for settings, cfg in settings_runs:
            run_cfg = cfg.model_copy(update={"seed": seed})
            rid = run_id(run_cfg)
            if rid not in seen:  # e.g. an OFAT value equal to the base case's
                seen.add(rid)
                planned.append(PlannedRun(rid, settings, seed, run_cfg))
    base_cfg = _build(bases, {}, (), factors, source)
    base_settings = _settings_of(base_cfg, keys, first_label)
    check_cells(claims, Layout(keys, [f.keys for f in factors], ofat, base_settings), [s for s, _ in settings_runs],
                source)
    return Sweep(name, source, keys, [f.keys for f in factors], ofat, base_settings,
                 planned, **tune_blocks, same_as_default=same_as_default(settings_runs),
                 claims=list(spec.get("claims") or []), cut=cut.strip() if cut else None)


def same_as_default(settings_runs: list[tuple[dict, Config]]) -> list[dict]:
    """Swept model options set to the model builder's own default where another planned setting, equal in
    everything else, leaves them null: the same network trained twice under two run ids (the ids stay apart:
    a builder's default may change). One ``{key, value, model}`` each, for the plan's warning and compare."""
    found: list[dict] = []
    unset = [s for s, _ in settings_runs]
    for settings, cfg in settings_runs:
        for key, value in settings.items():
            option = key.removeprefix("model.")
            if key == option or value is None or {**settings, key: None} not in unset:
                continue
            param = MODELS.options(cfg.model.name).get(option)
            default = getattr(param, "default", inspect.Parameter.empty)
            same = list(default) if isinstance(default, tuple) else default
            entry = {"key": key, "value": value, "model": cfg.model.name}
            if default is not inspect.Parameter.empty and same == value and entry not in found:
                found.append(entry)
    return found


def same_as_default_warning(source: str, entry: dict) -> str:
    key, value = entry["key"], json.dumps(entry["value"])
    return (f"{source}: {key}={value} is model {entry['model']}'s own default, which the runs leaving {key} null "
            f"already build: they train the same network twice, and compare shows them as two rows ({value} and "
            f"default). Drop the value {value}, or set {key}: {value} in the base study.")


def _plan_search(spec: dict, bases: dict[str, dict], search: dict, tune_blocks: dict, names: tuple) -> Sweep:
    """A searched sweep: the axes are a search space (ranges or lists of values), sampled by Ray Tune's
    Optuna searcher one trial at a time; each range's ends are validated against the study now."""
    name, source = names
    others = [k for k in ("zip", "random", "ofat") if spec.get(k)]
    if others or len(bases) != 1:
        raise ConfigError(f"{source}: a search samples the axes of one base study; "
                          f"{', '.join(others) or 'a list of bases'} cannot be combined with search: (run a grid "
                          "sweep for those)")
    (label, base), = bases.items()
    seeds = _seeds(spec.get("seeds"), base.get("seed", 0), source)
    if len(seeds) != 1:
        raise ConfigError(f"{source}: a search runs each sampled setting with one seed, got seeds {seeds}; re-run "
                          "the best settings with several seeds in a grid sweep to compare them")
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict) or not axes:
        raise ConfigError(f"{source}: search needs axes to sample, e.g. axes: {{optim.lr: {{loguniform: [1e-4, 1e-1]}}}}")
    for key, values in axes.items():
        _check_key(key, source)
        if isinstance(values, list) and not values:
            raise ConfigError(f"{source}: axis {key} needs a non-empty list of values")
        for v in values if isinstance(values, list) else check_range(key, values, source):
            try:
                build_config(apply_overrides(base, {key: v}))
            except ConfigError as e:
                raise ConfigError(f"{source}: axis {key} value {json.dumps(v)} is invalid: {e}") from None
    cfg = build_config(base, source).model_copy(update={"seed": seeds[0]})
    keys = list(axes)
    return Sweep(name, source, keys, [[k] for k in keys], False, _settings_of(cfg, keys, label), [],
                 search=search, space=dict(axes), base=base, seed=seeds[0], **tune_blocks)


def _read_bases(base: Any, base_dir: Path, sweep_name: str, source: str) -> dict[str, dict]:
    """{label: raw study mapping}; a path's label is its stem, an inline study's its name."""
    items = base if isinstance(base, list) else [base]
    if not items:
        raise ConfigError(f"{source}: base is an empty list")
    out: dict[str, dict] = {}
    for i, item in enumerate(items):
        if isinstance(item, str):
            path = Path(item) if Path(item).is_absolute() else base_dir / item
            raw = read_yaml(path)
            if "base" in raw or "axes" in raw:
                raise ConfigError(_sweep_as_base(Path(source), path))
            label = path.stem
        elif isinstance(item, dict):
            raw = dict(item)
            fallback = sweep_name if len(items) == 1 and name_problem(sweep_name) is None else f"base{i}"
            label = str(raw.get("name") or fallback)
        else:
            raise ConfigError(f"{source}: base must be a study file path or a mapping, got {item!r}")
        raw.setdefault("name", label)
        if label in out:
            raise ConfigError(f"{source}: two bases are both called {label!r}; give inline bases distinct names")
        out[label] = raw
    return out


def _sweep_as_base(source: Path, path: Path) -> str:
    """The message for a base that is itself a sweep file, naming the chain of files (and its cycle)."""
    chain, current = [source, path], path
    while True:
        try:
            nxt = read_yaml(current).get("base")
        except ConfigError:
            break
        if not isinstance(nxt, str):
            break
        current = Path(nxt) if Path(nxt).is_absolute() else current.parent / nxt
        seen = [c.resolve() for c in chain]
        chain.append(current)
        if current.resolve() in seen:
            return (f"{source}: the sweep files' base entries form a cycle: {' → '.join(map(str, chain))}; base must "
                    "name a study file (data, model, optim ... sections), not a sweep file")
    return f"{source}: base {path} is a sweep file (it has base/axes), not a study file; base must name a study file"


def _factors(spec: dict, source: str) -> list[_Factor]:
    axes = spec.get("axes") or {}
    if not isinstance(axes, dict):
        raise ConfigError(f"{source}: axes must be a mapping of dotted keys to lists of values")
    # zip groups may sit inside axes (axes: {zip: [...]}, keeping their place in the order) or at the top level
    factors = []
    for key, values in list(axes.items()) + [("zip", spec.get("zip") or [])]:
        if key == "zip":
            if not isinstance(values, list):
                raise ConfigError(f"{source}: zip must be a list of groups, each {{key: [values], key: [values]}}")
            factors += [_zip_factor(group, source) for group in values]
            continue
        _check_key(key, source)
        if isinstance(values, dict):
            raise ConfigError(f"{source}: axis {key} is a range ({values!r}); ranges are sampled by a searcher: add "
                              "search: {name: optuna, trials: N} and run with --executor ray, or give a list of values")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: axis {key} needs a non-empty list of values, got {values!r}")
        factors.append(_Factor(key, [key], [{key: v} for v in values]))
    if spec.get("random") is not None:
        factors.append(_random_factor(spec["random"], source))
    taken: dict[str, str] = {}
    for f in factors:
        for k in f.keys:
            if k in taken:
                raise ConfigError(f"{source}: {k} is varied twice ({taken[k]} and {f.label})")
            taken[k] = f.label
    return factors


def _zip_factor(group: Any, source: str) -> _Factor:
    if not isinstance(group, dict) or not group:
        raise ConfigError(f"{source}: each zip group is a mapping {{key: [values], key: [values]}}, got {group!r}")
    for key, values in group.items():
        _check_key(key, source)
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{source}: zip key {key} needs a non-empty list of values, got {values!r}")
    lengths = {len(v) for v in group.values()}
    if len(lengths) > 1:
        raise ConfigError(f"{source}: the lists of a zip group must have the same length; got "
                          + ", ".join(f"{k}: {len(v)}" for k, v in group.items()))
    keys = list(group)
    choices = [{k: group[k][i] for k in keys} for i in range(lengths.pop())]
    return _Factor(f"zip({', '.join(keys)})", keys, choices)


def _check_key(key: Any, source: str) -> None:
    if not isinstance(key, str) or not key:
        raise ConfigError(f"{source}: axis keys are dotted config keys such as optim.lr, got {key!r}")
    if key == "seed":
        raise ConfigError(f"{source}: vary seeds with 'seeds: N' (or a list), not an axis")


def _random_factor(block: Any, source: str) -> _Factor:
    if not isinstance(block, dict) or set(block) - {"samples", "seed", "space"}:
        raise ConfigError(f"{source}: random must be {{samples: N, seed: S, space: {{key: spec}}}}, got {block!r}")
    samples, seed, space = block.get("samples"), block.get("seed", 0), block.get("space")
    if not isinstance(samples, int) or samples < 1:
        raise ConfigError(f"{source}: random.samples must be a positive integer, got {samples!r}")
    if not isinstance(seed, int):
        raise ConfigError(f"{source}: random.seed must be an integer, got {seed!r}")
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{source}: random.space must map config keys to a distribution")
    for key, dist in space.items():
        _check_key(key, source)
        _check_distribution(key, dist, source)
    rng = random.Random(seed)
    choices = [{key: _draw(rng, dist) for key, dist in space.items()} for _ in range(samples)]
    return _Factor("random", list(space), choices)


def _check_distribution(key: str, dist: Any, source: str) -> None:
    kinds = ("log_uniform", "uniform", "choice")
    if not isinstance(dist, dict) or len(dist) != 1 or next(iter(dist)) not in kinds:
        raise ConfigError(f"{source}: random.space.{key} must be one of {{log_uniform: [lo, hi]}}, "
                          f"{{uniform: [lo, hi]}}, {{choice: [values]}}; got {dist!r}")
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{source}: random.space.{key}.choice needs a non-empty list")
        return
    ok = (isinstance(arg, list) and len(arg) == 2 and all(isinstance(v, (int, float)) for v in arg)
          and arg[0] < arg[1] and (kind == "uniform" or arg[0] > 0))
    if not ok:
        need = "0 < lo < hi" if kind == "log_uniform" else "lo < hi"
        raise ConfigError(f"{source}: random.space.{key}.{kind} needs [lo, hi] with {need}, got {arg!r}")


def _draw(rng: random.Random, dist: dict) -> Any:
    kind, arg = next(iter(dist.items()))
    if kind == "choice":
        return rng.choice(arg)
    lo, hi = arg
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "log_uniform" else rng.uniform(lo, hi)
    return float(f"{x:.4g}")  # 4 significant digits: readable in tables, and more is noise for a search


def _seeds(value: Any, default: int, source: str) -> list[int]:
    if value is None:
        return [default]
    if isinstance(value, bool) or not isinstance(value, (int, list)):
        raise ConfigError(f"{source}: seeds must be a count (3 → seeds 0, 1, 2) or a list of integers, got {value!r}")
    if isinstance(value, int):
        if value < 1:
            raise ConfigError(f"{source}: seeds must be at least 1, got {value}")
        if value > 10_000:
            raise ConfigError(f"{source}: seeds must be a count of at most 10000, got {value}")
        return list(range(value))
    if not value or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**32 for s in value) \
            or len(set(value)) != len(value):
        raise ConfigError(f"{source}: seeds must be a non-empty list of distinct integers in [0, 2**32) "
                          f"(the range of a study's seed), got {value!r}")
    return list(value)


def _build(bases: dict[str, dict], overrides: dict, combo: tuple, factors: list[_Factor], source: str) -> Config:
    """Build one combination; on error, name the axis value to blame (or the combination)."""
    label = overrides.get("base", next(iter(bases)))
    dotted = {k: v for k, v in overrides.items() if k != "base"}
    try:
        return build_config(apply_overrides(bases[label], dotted), f"{source} [{_describe(overrides)}]")
    except ConfigError as e:
        error = e
    # Find the single value that fails on its own against the base, so the message points at it.
    for choice in combo:
        if "base" in choice:
            continue
        try:
            build_config(apply_overrides(bases[label], choice))
        except ConfigError as e:
            factor = next(f for f in factors if set(choice) <= set(f.keys))
            if len(choice) == 1:
                key, value = next(iter(choice.items()))
                what = f"axis {key} value {json.dumps(value)}"
            else:
                what = f"{factor.label} values {_describe(choice)}"
            raise ConfigError(f"{source}: {what} is invalid: {e}") from None
    raise ConfigError(f"{source}: the combination {_describe(overrides)} is invalid: {error}") from None


def _describe(settings: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in settings.items()) or "(base case)"


def _settings_of(cfg: Config, keys: list[str], base_label: str) -> dict[str, Any]:
    """The swept keys' values in a built config, so every row names its full setting."""
    d = cfg.to_dict()
    out = {}
    for k in keys:
        if k == "base":
            out[k] = base_label
            continue
        node: Any = d
        for part in k.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        out[k] = node
    return out


# ----------------------------------------------------------------------------- running one run


def _state(out: Path, run: PlannedRun, rows: dict[str, dict]) -> str:
    """done | recover (finished, row missing or naming fewer settings) | resume (last.pt) | rerun (leftovers) | new."""
    run_dir = out / run.run_dir
    summary = read_summary(run_dir)
    if summary and summary.get("status") in FINAL_STATUSES and summary.get("seed") == run.seed:
        row = rows.get(run.run_id)
        # A row written by a sweep file that varied fewer keys (a shortened copy) is rewritten naming them all.
        named = row is not None and set(run.settings) <= set(row.get("settings") or {})
        return "done" if named and row.get("status") == summary["status"] else "recover"
    if (run_dir / "last.pt").exists():
        return "resume"
    if run_dir.exists() and any(p.name != runs.LOCK_NAME for p in run_dir.iterdir()):
        return "rerun"
    return "new"


def _worker_init(threads: int, parent: int, started=None, gpus: tuple = ()) -> None:
    if gpus:
        assign_gpu(started, gpus)
    import torch

    die_with_parent(parent)
    # Workers share the machine's cores: N workers × (cores // N) threads, never oversubscribed.
    torch.set_num_threads(threads)


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def assign_gpu(started, gpus: tuple) -> None:
    """Several GPUs: the k-th worker to start sees only GPU k mod n, as its cuda:0 (set before torch
    touches CUDA). ``started`` is a shared counter of the workers started so far."""
    with started.get_lock():
        k, started.value = started.value, started.value + 1
    os.environ["CUDA_VISIBLE_DEVICES"] = gpus[k % len(gpus)]


def die_with_parent(parent: int, poll_s: float = 0.5) -> None:
    """End this worker process when the sweep process ``parent`` ends, however it ends (kill -9
    included), so no worker trains on, or idles, after its sweep. Linux: the kernel sends SIGKILL
    (prctl PR_SET_PDEATHSIG); everywhere: a daemon thread that watches the parent pid. A worker
    killed mid-run is like a run killed with -9: the next sweep resumes it from last.pt."""
    import signal
    import threading

    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still does it
    if os.getppid() != parent:  # the parent died before the line above took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                os.kill(os.getpid(), getattr(signal, "SIGKILL", signal.SIGTERM))

    threading.Thread(target=watch, name="cnnlab-parent-watchdog", daemon=True).start()


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- executors


def _run_local(tasks: list[dict], on_row: Callable[[dict], None], on_start: Callable[[dict], None]) -> None:
    for task in tasks:
        on_start(task)
        row = execute_task(task)
        on_row(row)
        if row["status"] == Status.INTERRUPTED:  # Ctrl-C inside a run: stop the sweep too
            raise KeyboardInterrupt


def worker_pool(workers: int, gpus: tuple | None = None) -> ProcessPoolExecutor:
    """The pool of worker processes `cnnlab sweep --workers N` runs its runs on: spawned, cores // N
    threads each, tied to this process, and with two GPUs or more, each worker on its own GPU.
    ``gpus`` (default: the visible GPUs) is for benchmarks/gpu_check.py, which checks the assignment
    with made-up GPU names on a machine with fewer than two."""
    import multiprocessing

    from cnnlab.runtime import visible_gpus  # here: planning a sweep does not import torch

    # 'spawn': a fresh interpreter per worker; forking a process that already ran torch threads can hang.
    ctx = multiprocessing.get_context("spawn")
    threads = max(1, _cores() // workers)
    gpus = visible_gpus() if gpus is None else tuple(gpus)
    initargs = (threads, os.getpid(), ctx.Value("i", 0), gpus if len(gpus) > 1 else ())
    return ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=initargs)


def _run_processes(tasks: list[dict], workers: int, on_row: Callable[[dict], None]) -> None:
    pool = worker_pool(workers)
    try:
        futures = {pool.submit(execute_task, t): t for t in tasks}
        for fut in as_completed(futures):
            task = futures[fut]
            try:
                on_row(fut.result())
            except BrokenProcessPool as e:
                # A worker died (killed, out of memory): its runs never wrote a row; record them.
                row = row_from_summary(task, {"status": Status.FAILED}, error=f"worker process died: {e}")
                append_row(Path(task["out_dir"]) / RESULTS, row)
                on_row(row)
    except KeyboardInterrupt:
        # The workers got the same SIGINT: their runs stop at the next step as 'interrupted'.
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _ray_job(sweep: Sweep, tasks: list[dict], out: Path, workers: int, address: str | None):
    from cnnlab.sweep_ray import RayJob

    configs = [r.config for r in sweep.runs] or [build_config(sweep.base)]
    return RayJob(out=out.resolve(), tasks=tasks, workers=workers, address=address, resources=sweep.resources,
                  scheduler=sweep.scheduler, search=sweep.search, space=sweep.space, base=sweep.base, seed=sweep.seed,
                  devices=tuple(sorted({c.train.device for c in configs})),
                  epochs=max(c.train.epochs for c in configs))


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("the ray executor needs Ray Tune, which is not installed: pip install cnnlab[ray]") from None
    return ray, tune


# ----------------------------------------------------------------------------- the sweep


def run_sweep(sweep_path: str | Path, out_dir: str | Path | None = None, workers: int = 1,
              executor: str = "local", address: str | None = None, dry_run: bool = False,
              resources: dict | None = None, wait: bool = False) -> list[dict]:
    """Run (or with ``dry_run`` only plan) a sweep file; returns one row per planned run.

    Output goes to ``out_dir`` (default ``sweeps/<sweep file stem>``): ``runs/<run_id>/``,
    ``results.jsonl``, ``plan.json`` and a copy of the sweep file. Runs already finished are
    skipped; interrupted ones resume from ``last.pt``; failed ones run again. A dry run
    returns the plan (each row's ``state`` says what a real run would do) and writes nothing.
    One sweep command writes a sweep folder at a time (a lock on ``.sweep.lock``): another one
    refuses, naming the running command, or with ``wait`` waits for it to end.
    """
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    resources = {k: v for k, v in (resources or {}).items() if v is not None}
    if executor == "local" and (address or resources):
        raise ConfigError("--address, --cpus-per-run and --gpus-per-run apply to the ray executor only "
                          "(add --executor ray)")
    resources = check_resources(resources, "--cpus-per-run / --gpus-per-run")
    sweep = load_sweep(sweep_path)  # validates every config before anything is written
    for entry in sweep.same_as_default:
        warn(same_as_default_warning(sweep.source, entry))
    if executor == "local" and sweep.search:
        raise ConfigError(f"{sweep.source}: search: is Ray Tune's; run the sweep with --executor ray (on this machine, "
                          "without --address, Ray starts a private instance)")
    if executor == "local" and sweep.scheduler:  # one file serves both executors: here every run goes to its end
        warn(f"{sweep.source}: scheduler: {sweep.scheduler['name']} is Ray Tune's; the local executor runs every run "
             "to its end without pruning (--executor ray prunes)")
    sweep.resources = {**sweep.resources, **resources}  # the command line wins over the sweep file
    if out_dir is None:  # the default folder is built from the file name: it must stay inside sweeps/
        check_name(sweep.name, "the sweep file name (the default --out is sweeps/<file stem>)", str(sweep_path))
    out = Path(out_dir) if out_dir is not None else Path("sweeps") / sweep.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if dry_run:
        return _dry_run(sweep, out)
    if address is not None and not address.strip():
        raise ConfigError("--address is empty; give the HOST:PORT of a Ray cluster's head, or leave it out")
    if executor == "ray":
        _import_ray()  # fail before writing anything when Ray is missing
        from cnnlab.sweep_ray import probe

        probe(address or os.environ.get("RAY_ADDRESS"))  # an address nobody answers: said now, in seconds
    with runs.FolderLock(out, SWEEP_LOCK, what="sweep folder", wait=wait):
        if executor != "ray":
            return _run_locked(sweep, sweep_path, out, workers, executor, address)
        from cnnlab import sweep_ray  # joined (or started) before anything is written: its errors cost nothing

        started = sweep_ray.connect(address)
        try:
            # resources no node can hold: said before anything is written
            sweep_ray.cluster_resources(sweep.resources, _ray_job(sweep, [], out, workers, address).devices)
            return _run_locked(sweep, sweep_path, out, workers, executor, address)
        finally:
            if started:
                sweep_ray.disconnect()


def _dry_run(sweep: Sweep, out: Path) -> list[dict]:
    rows = {r["run_id"]: r for r in load_results(out)}
    if sweep.search:
        print(f"sweep {sweep.name}: {sweep.search['name']} search of {sweep.search['trials']} trials on "
              f"{sweep.search['metric']} ({len(rows)} rows already in {out}) over:", flush=True)
        for key, spec in sweep.space.items():
            print(f"  {key}: {json.dumps(spec)}", flush=True)
        return []
    states = {r.run_id: _state(out, r, rows) for r in sweep.runs}
    print(format_plan(sweep, states, out), flush=True)
    return [{"run_id": r.run_id, "settings": r.settings, "seed": r.seed, "run_dir": r.run_dir,
             "state": states[r.run_id],
             "status": rows[r.run_id]["status"] if states[r.run_id] == "done" else Status.PLANNED}
            for r in sweep.runs]


def _run_locked(sweep: Sweep, sweep_path: str | Path, out: Path, workers: int, executor: str,
                address: str | None) -> list[dict]:
    """run_sweep's work, with the sweep folder's lock held (the states are read under it)."""
    rows = {r["run_id"]: r for r in load_results(out)}
    states = {r.run_id: _state(out, r, rows) for r in sweep.runs}
    runs.write_text(out / "sweep.yaml", Path(sweep_path).read_text())
    runs.write_json(out / PLAN, sweep.to_dict())
    for r in sweep.runs:
        if states[r.run_id] == "recover":  # finished, but its row was lost: rebuild it from summary.json
            append_row(out / RESULTS, row_from_summary(_run_info(r), read_summary(out / r.run_dir)))

    todo = [r for r in sweep.runs if states[r.run_id] in ("new", "resume", "rerun")]
    if sweep.search:
        print(f"sweep {sweep.name}: {sweep.search['name']} search of {sweep.search['trials']} trials "
              f"({len(rows)} already done) → {out}", flush=True)
    else:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs ({len(sweep.runs) - len(todo)} already done, "
              f"{len(todo)} to run) → {out}" + (f" [{executor}, {workers} workers]" if workers > 1 else ""), flush=True)
    quiet = workers > 1 or executor == "ray"  # progress bars of parallel runs would garble the terminal
    tasks = [_task(r, out, states[r.run_id], quiet) for r in todo]
    for task in tasks:  # which sweep run each is: trackers group the sweep's runs, named by their settings
        task["config"]["train"]["sweep"] = {"name": sweep.name, "run_id": task["run_id"], "settings": task["settings"]}
    done = [0]
    total = max(0, sweep.search["trials"] - len(rows)) if sweep.search else len(tasks)

    shown_base = sweep.base_settings if sweep.ofat else None  # OFAT progress lines name only the factor that differs

    def on_start(task: dict) -> None:
        print(f"[{done[0] + 1}/{len(tasks)}] {task['run_id']} {describe_run(task['settings'], shown_base)} "
              f"seed={task['seed']}"
              + (" (resuming)" if task["resume"] else ""), flush=True)

    kinds, finished = {task["run_id"]: _run_kind(task) for task in tasks}, []  # for the time-left estimate

    def on_row(row: dict) -> None:
        done[0] += 1
        classes = num_classes(out, [row], default=0) or None
        finished.append((*kinds.pop(row["run_id"], (None, None)), row.get("time_s")))
        left = [*kinds.values(), *[(None, None)] * (total - done[0] - len(kinds))]  # a search's trials: unknown
        print(f"[{done[0]}/{total}] {format_row(row, shown_base, classes)}"
              f"{eta(finished, left, time.perf_counter() - t0)}", flush=True)

    t0 = time.perf_counter()
    try:
        if (tasks or sweep.search) and executor == "ray":
            from cnnlab import sweep_ray  # here: planning and local sweeps do not import Ray

            sweep_ray.run_job(_ray_job(sweep, tasks, out, workers, address), on_row)
        elif tasks and workers > 1:
            _run_processes(tasks, workers, on_row)
        else:
            _run_local(tasks, on_row, on_start)
    except KeyboardInterrupt:
        print(f"sweep interrupted: run the same command again to resume ({out})", flush=True)
    if sweep.search:  # the sampled runs are the plan now (compare and report read it)
        runs.write_json(out / PLAN, {**sweep.to_dict(), "runs": [
            {k: r[k] for k in ("run_id", "settings", "seed", "run_dir")} for r in load_results(out, log=None)]})
    result = planned_rows(sweep, out)
    counts: dict[str, int] = {}
    for r in result:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"sweep {sweep.name} done in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"\nresults: {out / RESULTS}; table: cnnlab compare {out} --by {_compare_hint(sweep)}", flush=True)
    return result


def eta(done: list[tuple], left: list[tuple], elapsed: float) -> str:
    """`` (12.3 s elapsed, about 1 min 5 s left)``. ``done``: (base, model, seconds) of each run finished so far
    (seconds None when unknown); ``left``: (base, model) of each run to go. Bases can differ in cost many times over
    (an MLP beside a LeNet), so each run to go is expected to take the mean of the finished runs of its base and
    model, else of its base, else of its model, else of all; their sum is scaled by the elapsed time over the
    finished runs' seconds, which accounts for parallel workers and the time between runs."""
    if not left or not done:
        return f" ({elapsed:.1f} s elapsed)"
    timed = [(b, m, s) for b, m, s in done if s is not None and s > 0]
    if not timed:  # no finished run says how long it took: all runs alike
        left_s = elapsed / len(done) * len(left)
    else:
        left_s = elapsed * sum(_expected_seconds(timed, base, model) for base, model in left) / sum(
            s for *_, s in timed)
    text = f"{left_s:.0f} s" if left_s < 90 else f"{left_s // 60:.0f} min {left_s % 60:.0f} s"
    return f" ({elapsed:.1f} s elapsed, about {text} left)"


def _expected_seconds(timed: list[tuple], base, model) -> float:
    """The mean seconds of the finished runs most like (base, model): both the same, else the base, else the model,
    else any."""
    for alike in ((lambda b, m: (b, m) == (base, model)), (lambda b, m: b == base), (lambda b, m: m == model),
                  (lambda b, m: True)):
        if seconds := [s for b, m, s in timed if alike(b, m)]:
            return sum(seconds) / len(seconds)
    return 0.0  # no finished run timed (not reached: eta asks only when one is)


def _run_kind(task: dict) -> tuple[str, str]:
    """A sweep task's (base, model): runs alike in cost (:func:`eta`). The base is the study it was built from."""
    return task["settings"].get("base", task["config"].get("name")), task["config"]["model"]["name"]


def _compare_hint(sweep: Sweep) -> str:
    # One factor per table in an OFAT sweep (each named, so none is missed); a grid's table has them all.
    if sweep.ofat and len(sweep.factors) > 1:
        return (f"{sweep.factors[0][0]}  (one table per factor: --by "
                + " | ".join(f[0] for f in sweep.factors) + ")")
    return ",".join(sweep.factors[0] if sweep.ofat and sweep.factors else sweep.keys) or "base"


def planned_rows(sweep: Sweep, out: Path) -> list[dict]:
    """The results row of every planned run, in plan order (status 'pending' where none exists);
    a search's rows in the order they were written."""
    rows = {r["run_id"]: r for r in load_results(out)}
    if sweep.search:
        return list(rows.values())
    return [rows.get(r.run_id) or {**_run_info(r), "status": Status.PENDING} for r in sweep.runs]


def _run_info(r: PlannedRun) -> dict:
    return {"run_id": r.run_id, "settings": r.settings, "seed": r.seed, "run_dir": r.run_dir}


def _task(r: PlannedRun, out: Path, state: str, quiet: bool) -> dict:
    config = r.config.to_dict()
    if quiet:
        config["train"]["progress"] = False  # display only: the run id (hash) was taken before
    return {**_run_info(r), "out_dir": str(out.resolve()), "config": config,
            "resume": state == "resume", "force": state == "rerun"}


def describe_run(settings: dict, base: dict | None = None) -> str:
    """A run's settings as ``key=value, ...``; given the ``base`` case's settings (a one-factor-at-a-time
    sweep), only the values that differ from it, so a line names the factor the run varies."""
    if base is None:
        return _describe(settings)
    return _describe({k: v for k, v in settings.items() if k not in base or base[k] != v})


def format_row(row: dict, base: dict | None = None, classes: int | None = None) -> str:
    """A finished run's progress line (``base``: see describe_run). Given the run's class count, a test
    accuracy at chance level is said as such, so a collapsed run does not read as one more result."""
    acc = (row.get("test") or {}).get("accuracy")
    text = f"{row['run_id']} {describe_run(row['settings'], base)} seed={row['seed']}: {row['status']}"
    if acc is not None:
        text += f" test accuracy {acc:.4f}"
        if row["status"] == Status.PRUNED:  # cut short on purpose: its score says nothing about learning
            epoch = (row.get("best") or {}).get("epoch")
            text += (" (stopped by the sweep's scheduler" + (f" at epoch {epoch:g}" if isinstance(epoch, (int, float))
                                                             else "") + ": a partial score, not a result)")
        elif at_chance(acc, classes):
            text += " (chance level: the network did not learn)"
    if row.get("time_s") is not None:
        text += f" ({row['time_s']:.1f} s)"
    if row.get("error") and row["status"] != Status.COMPLETED:
        text += f": {row['error']}"
    return text


def format_plan(sweep: Sweep, states: dict[str, str], out: Path) -> str:
    """The planned runs as a text table (what --dry-run prints)."""
    n_settings = len({json.dumps(r.settings, sort_keys=True) for r in sweep.runs})
    n_seeds = len({r.seed for r in sweep.runs})
    mode = "one factor at a time" if sweep.ofat else "grid"
    head = ["#", "run_id", "state", "seed", *sweep.keys]
    body = [[str(i + 1), r.run_id, states.get(r.run_id, "new"), str(r.seed),
             *(json.dumps(r.settings[k]) if not isinstance(r.settings[k], str) else r.settings[k]
               for k in sweep.keys)]
            for i, r in enumerate(sweep.runs)]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [f"sweep {sweep.name} ({mode}): {n_settings} settings × {n_seeds} seeds → {len(sweep.runs)} runs "
             f"in {out}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    by_state: dict[str, int] = {}
    for s in states.values():
        by_state[s] = by_state.get(s, 0) + 1
    lines.append("states: " + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())))
    return "\n".join(lines)
