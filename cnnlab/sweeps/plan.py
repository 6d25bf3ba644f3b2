"""The sweep file: its grammar, and the plan it becomes (every run's config, settings and seed).

A sweep file names a ``base`` study (a path relative to the sweep file, an inline
mapping, or a list of either to compare whole studies), the ``axes`` to vary (each a
dotted config key with a list of values), ``zip`` groups of keys whose values change
together, an optional ``random`` search space, and ``seeds`` (a count or a list); ``folds: k`` runs every
setting and seed once per fold of a k-fold cross-validation (``data.folds`` / ``data.fold``, not a setting: a
compare cell pools folds × seeds).
A range, in a search's axes or the random space, is ``{loguniform|uniform|int: [lo, hi]}`` or
``{choice: [values]}`` (:func:`check_range`, the one grammar of both).
Axes form a grid by default; ``ofat: true`` varies one factor at a time from the base
case instead. Every config is built and validated here, before anything runs, so a typo
costs seconds, not the hours of the runs before it. Each run gets an id that is a
hash of its resolved config and seed (:func:`cnnlab.sweeps.task.run_id`). A sweep file
may also ask Ray for ``resources`` per run, a ``scheduler`` and a ``search`` (checked
here; :mod:`cnnlab.sweeps.tune` runs them on Ray), carry the study's ``claims``
(:mod:`cnnlab.reporting.claims`, checked against the planned cells) and say in ``cut``
how its schedule was shortened from the study's. Nothing here imports torch or runs anything.
"""
from __future__ import annotations

import inspect
import itertools
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.config.load import anchor_paths, build_config
from cnnlab.config.schema import Config, ConfigError, apply_overrides, name_problem, read_yaml
from cnnlab.registry import MODELS
from cnnlab.reporting.claims import Layout, check_cells, parse_claims
from cnnlab.sweeps.task import run_id

SWEEP_KEYS = ("description", "base", "axes", "zip", "ofat", "random", "seeds", "folds", "resources", "scheduler",
              "search", "claims", "cut")


# ----------------------------------------------------------------------------- ranges and the Ray blocks

# What a run's evaluation points report, and which way is better: what a scheduler or a search may follow.
METRIC_MODES = {"val.accuracy": "max", "val.loss": "min", "train.loss": "min", "train.accuracy": "max"}
SCHEDULERS = ("asha", "median")  # Ray Tune's ASHA and median stopping rule
SEARCHERS = ("optuna",)
# The one range grammar, of a search's axes and of the random block's space: {kind: argument}.
RANGES = {"loguniform": "0 < lo < hi", "uniform": "lo < hi", "int": "integers lo < hi (both included)",
          "choice": None}  # what [lo, hi] must hold
MISSPELLED_RANGES = {"log_uniform": "loguniform", "log-uniform": "loguniform", "randint": "int"}


def check_range(where: str, spec: Any, source: str, lists: bool = False) -> list:
    """A range ``{loguniform|uniform|int: [lo, hi]}`` or ``{choice: [values]}`` (``where`` names it in errors:
    "axis optim.lr", "random.space.optim.lr"; ``lists``: the error says a list of values is allowed there too);
    returns the values to validate against the study: its ends, or its choices."""
    kind, arg = next(iter(spec.items())) if isinstance(spec, dict) and len(spec) == 1 else (None, None)
    if kind in MISSPELLED_RANGES:
        right = MISSPELLED_RANGES[kind]
        raise ConfigError(f"{source}: {where}: write {{{right}: {json.dumps(arg)}}}, not {{{kind}: ...}} (a sweep "
                          f"file's ranges are {', '.join(RANGES)}, as Ray Tune spells them)")
    if kind not in RANGES:
        kinds = ", ".join(f"{{{k}: {'[values]' if k == 'choice' else '[lo, hi]'}}}" for k in RANGES)
        either = "a list of values or a range" if lists else "a range"
        raise ConfigError(f"{source}: {where} must be {either}, one of {kinds}; got {spec!r}")
    if kind == "choice":
        if not isinstance(arg, list) or not arg:
            raise ConfigError(f"{source}: {where}: choice needs a non-empty list of values, got {arg!r}")
        return list(arg)
    numbers = isinstance(arg, list) and len(arg) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in arg)
    ok = numbers and arg[0] < arg[1] and (kind != "loguniform" or arg[0] > 0) and (
        kind != "int" or all(isinstance(v, int) for v in arg))
    if not ok:
        raise ConfigError(f"{source}: {where}: {kind} needs [lo, hi] with {RANGES[kind]}, got {arg!r}")
    return list(arg)


def draw(rng: random.Random, spec: dict) -> Any:
    """One value of a range (checked by check_range) drawn with ``rng``: a choice, an integer, or a float rounded
    to 4 significant digits."""
    kind, arg = next(iter(spec.items()))
    if kind == "choice":
        return rng.choice(arg)
    lo, hi = arg
    if kind == "int":
        return rng.randint(lo, hi)
    x = math.exp(rng.uniform(math.log(lo), math.log(hi))) if kind == "loguniform" else rng.uniform(lo, hi)
    return float(f"{x:.4g}")  # 4 significant digits: readable in tables, and more is noise for a search


def check_resources(value: Any, source: str) -> dict:
    """``resources: {cpu: N, gpu: G}``: numbers, fractions allowed; gpu above 1 must be whole (Ray's rule)."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"cpu", "gpu"}:
        raise ConfigError(f"{source}: resources must be {{cpu: N, gpu: G}} (what one run asks Ray for), "
                          f"got {value!r}")
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ConfigError(f"{source}: resources.{key} must be a number ≥ 0 (fractions such as 0.5 share a "
                              f"device between runs), got {v!r}")
    if value.get("cpu") == 0:
        raise ConfigError(f"{source}: resources.cpu must be above 0 (a run needs a CPU to feed it), got 0")
    gpu = value.get("gpu", 0)
    if gpu > 1 and gpu != int(gpu):
        raise ConfigError(f"{source}: resources.gpu above 1 must be a whole number (Ray gives a run either a "
                          f"share of one GPU or whole GPUs), got {gpu}")
    return {k: float(v) for k, v in value.items()}


def _check_metric(block: dict, what: str, source: str) -> str:
    metric = block.get("metric", "val.accuracy")
    if metric not in METRIC_MODES:
        raise ConfigError(f"{source}: {what}.metric must be one of {', '.join(METRIC_MODES)} (what each evaluation "
                          f"point reports to Tune), got {metric!r}")
    return metric


def check_scheduler(block: Any, source: str) -> dict | None:
    """``scheduler: {name: asha|median, metric, grace_epochs, reduction_factor (asha), min_samples (median)}``."""
    if block is None:
        return None
    allowed = {"name", "metric", "grace_epochs", "reduction_factor", "min_samples"}
    if not isinstance(block, dict) or block.get("name") not in SCHEDULERS or set(block) - allowed:
        raise ConfigError(f"{source}: scheduler must be {{name: asha, metric: val.accuracy, grace_epochs: 1, "
                          f"reduction_factor: 3}} or {{name: median, metric: val.accuracy, grace_epochs: 1, "
                          f"min_samples: 3}} (Ray Tune's ASHA or median stopping rule), got {block!r}")
    out = {"name": block["name"], "metric": _check_metric(block, "scheduler", source)}
    grace = block.get("grace_epochs", 1)
    if isinstance(grace, bool) or not isinstance(grace, (int, float)) or not grace > 0:
        raise ConfigError(f"{source}: scheduler.grace_epochs must be a number of epochs > 0 (no run is stopped "
                          f"before it), got {grace!r}")
    out["grace_epochs"] = grace
    for key, low, default in (("reduction_factor", 2, 3), ("min_samples", 1, 3)):
        v = block.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"{source}: scheduler.{key} must be an integer ≥ {low}, got {v!r}")
        out[key] = v
    return out


def check_search(block: Any, source: str) -> dict | None:
    """``search: {name: optuna, trials: N, metric: val.accuracy, seed: S}`` (seed: the sweep's seed by default)."""
    if block is None:
        return None
    if not isinstance(block, dict) or block.get("name") not in SEARCHERS or set(block) - {"name", "trials",
                                                                                         "metric", "seed"}:
        raise ConfigError(f"{source}: search must be {{name: optuna, trials: 20, metric: val.accuracy}} (Ray Tune's "
                          f"Optuna searcher over the axes declared as ranges), got {block!r}")
    trials = block.get("trials")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"{source}: search.trials must be a positive integer (how many settings to try), "
                          f"got {trials!r}")
    seed = block.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{source}: search.seed must be an integer, got {seed!r}")
    return {"name": "optuna", "trials": trials, "metric": _check_metric(block, "search", source), "seed": seed}


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

    def info(self) -> dict:
        """What a results row and a task say about this run."""
        return {"run_id": self.run_id, "settings": self.settings, "seed": self.seed, "run_dir": self.run_dir}


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
    scheduler: dict | None = None  # Ray Tune's ASHA or median stopping (check_scheduler)
    search: dict | None = None  # Ray Tune's Optuna searcher (check_search)
    space: dict = field(default_factory=dict)  # a search's axes: {key: [values] | {loguniform: [lo, hi]} ...}
    base: dict = field(default_factory=dict)  # a search's study mapping, each sampled run built from it
    seed: int = 0  # a search's runs' seed
    # swept model options whose value is the builder's own default next to a run leaving them null (same_as_default)
    same_as_default: list[dict] = field(default_factory=list)
    claims: list[dict] = field(default_factory=list)  # the study's claims as the file gives them (cnnlab.reporting.claims)
    cut: str | None = None  # how the schedule was shortened from the study's, in words; None: the study's own
    folds: int | None = None  # k-fold cross-validation: every setting and seed runs once per fold (data.fold)

    def to_dict(self) -> dict:
        return {"name": self.name, "source": self.source, "keys": self.keys, "factors": self.factors,
                "ofat": self.ofat,
                "base_settings": self.base_settings,
                "runs": [r.info() for r in self.runs],
                **({"search": self.search, "space": self.space} if self.search else {}),
                **({"scheduler": self.scheduler} if self.scheduler else {}),
                **({"same_as_default": self.same_as_default} if self.same_as_default else {}),
                **({"claims": self.claims} if self.claims else {}),
                **({"cut": self.cut} if self.cut else {}),
                **({"folds": self.folds} if self.folds else {})}


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
        if spec.get("folds") is not None:
            raise ConfigError(f"{source}: folds cross-validate the cells of a grid or one-factor-at-a-time sweep; a "
                              "search samples its settings with one run each (drop folds: or the search:)")
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
    folds = _folds(spec.get("folds"), source)

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
    fold_runs = settings_runs if folds is None else \
        [(st, _with_fold(cfg, folds, k, source)) for k in range(folds) for st, cfg in settings_runs]
    for seed in seeds:  # seeds outermost: a partial sweep already covers every cell once
        for settings, cfg in fold_runs:
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
                 claims=list(spec.get("claims") or []), cut=cut.strip() if cut else None, folds=folds)


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
        for v in values if isinstance(values, list) else check_range(f"axis {key}", values, source, lists=True):
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
            raw = anchor_paths(read_yaml(path), path.parent)  # its relative paths: from its own folder
            if "base" in raw or "axes" in raw:
                raise ConfigError(_sweep_as_base(Path(source), path))
            label = path.stem
        elif isinstance(item, dict):
            raw = anchor_paths(item, base_dir)  # an inline study's relative paths: from the sweep file's folder
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
        if isinstance(dist, list):
            raise ConfigError(f"{source}: random.space.{key} must be a range; for a list of values write "
                              f"{{choice: {json.dumps(dist)}}}")
        check_range(f"random.space.{key}", dist, source)
    rng = random.Random(seed)
    choices = [{key: draw(rng, dist) for key, dist in space.items()} for _ in range(samples)]
    return _Factor("random", list(space), choices)


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


def _folds(value: Any, source: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 2 <= value <= 20:
        raise ConfigError(f"{source}: folds must be a number of folds from 2 to 20 (k-fold cross-validation: every "
                          f"setting and seed runs once per fold), got {value!r}")
    return value


def _with_fold(cfg: Config, folds: int, fold: int, source: str) -> Config:
    """``cfg`` validating on fold ``fold`` of ``folds`` (data.folds / data.fold), checked as any run's config."""
    if cfg.data.folds is not None:
        raise ConfigError(f"{source}: folds: {folds} and the study's own data.folds={cfg.data.folds} both set the "
                          "folds; keep one (the sweep's folds runs every fold)")
    return build_config(apply_overrides(cfg.to_dict(), {"data.folds": folds, "data.fold": fold}),
                        f"{source} [folds: {folds}, fold {fold}]")


def _build(bases: dict[str, dict], overrides: dict, combo: tuple, factors: list[_Factor], source: str) -> Config:
    """Build one combination; on error, name the axis value to blame (or the combination)."""
    label = overrides.get("base", next(iter(bases)))
    dotted = {k: v for k, v in overrides.items() if k != "base"}
    try:
        return build_config(apply_overrides(bases[label], dotted), f"{source} [{describe(overrides)}]")
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
                what = f"{factor.label} values {describe(choice)}"
            raise ConfigError(f"{source}: {what} is invalid: {e}") from None
    raise ConfigError(f"{source}: the combination {describe(overrides)} is invalid: {error}") from None


def describe(settings: dict) -> str:
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


