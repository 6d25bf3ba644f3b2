"""A study's claims as code: each claim names its cells by their settings, one rule gives its verdict.

A sweep file may carry ``claims:``, a list of what the study it re-runs said, each checked when the
sweep file loads. A claim compares two cells (``a``, ``b``: mappings of swept keys to values) with a
relation (``>``, ``<``, or ``≈`` within a ``margin``), or one cell with the study's own figure
(``level``, with ``≈`` within a ``tolerance``, or ``>`` / ``<``); it quotes the study's figure
(``study``) and where the study says it (``where``). :func:`judge` is the one rule that turns a claim
and the sweep's rows into a verdict:

- **not tested**: a cell has fewer than 3 finished runs; or the claim is a level (or is marked
  ``needs_full_schedule``) and the sweep file marks its schedule as ``cut``;
- **unstable k/n**: k of a cell's n runs collapsed (ended at chance, or diverged) and the rest did not:
  a mean over such runs describes no run, so no other word is given;
- for ``>`` / ``<``: Welch's t-test; **holds** when p < 0.05 in the claimed direction, **reversed**
  when p < 0.05 the other way, else **within noise** (with the seeds per cell that would resolve the
  observed difference at power 0.8);
- for ``≈``: two one-sided tests against the margin (TOST); **holds** only when they show the difference
  inside ±margin; **differs** (**level differs** for a level) when Welch's (one-sample) test finds a
  difference and TOST does not show it small; else **within noise**. A large p alone never makes "holds".

Rows are read as :mod:`cnnlab.reporting.compare` reads them (last row per run, finished runs' metrics). A row
belongs to a cell when it has the cell's values (and, one factor at a time, the base case's elsewhere);
a row that does not name a key was written before the sweep file varied it. A cell that would pool two
settings, or two runs of one seed, is an error: the claim must name the key that tells them apart.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnnlab import runs
from cnnlab.reporting import results
from cnnlab.reporting import stats
from cnnlab.config.schema import ConfigError

CLAIM_KEYS = ("claim", "a", "relation", "b", "level", "margin", "tolerance", "metric", "study", "where",
              "needs_full_schedule", "note")
RELATIONS = {">": ">", "<": "<", "≈": "≈", "~": "≈", "~=": "≈", "approx": "≈"}
MIN_SEEDS = 3  # fewer finished runs in a cell: not tested
POWER = 0.8  # of the seeds-needed estimate for a within-noise claim
DEFAULT_METRIC = "test.accuracy"

HOLDS, WITHIN_NOISE, REVERSED, DIFFERS, LEVEL_DIFFERS, NOT_TESTED, UNSTABLE = (
    "holds", "within noise", "reversed", "differs", "level differs", "not tested", "unstable")
WORDS = (HOLDS, WITHIN_NOISE, REVERSED, DIFFERS, LEVEL_DIFFERS, NOT_TESTED, UNSTABLE)


@dataclass(frozen=True)
class Claim:
    text: str
    a: dict[str, Any]
    relation: str  # ">", "<" or "≈"
    study: str  # the study's figure(s), as it gives them
    where: str  # where the study says it
    b: dict[str, Any] | None = None
    level: float | None = None
    margin: float | None = None  # for a ≈ b
    tolerance: float | None = None  # for a ≈ level
    metric: str = DEFAULT_METRIC
    needs_full_schedule: bool | None = None  # a cut schedule cannot test it; None: a level cannot, a pair can
    note: str = ""

    @property
    def is_level(self) -> bool:
        return self.level is not None

    @property
    def full_schedule_only(self) -> bool:
        return self.is_level if self.needs_full_schedule is None else self.needs_full_schedule


# ----------------------------------------------------------------------------- reading claims


def parse_claims(value: Any, source: str) -> list[Claim]:
    """The ``claims:`` list of a sweep file as Claims; a ConfigError names the claim and the field at fault."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{source}: claims must be a list of claims (each a mapping with claim, a, relation, b "
                          f"or level, study, where), got {type(value).__name__}")
    return [_parse_claim(item, i, source) for i, item in enumerate(value, 1)]


def _parse_claim(item: Any, i: int, source: str) -> Claim:
    where = f"{source}: claim {i}"
    if not isinstance(item, dict):
        raise ConfigError(f"{where} must be a mapping (claim, a, relation, b or level, study, where), got {item!r}")
    if isinstance(item.get("claim"), str) and item["claim"].strip():
        where += f" ({item['claim'].strip()[:60]!r})"

    def bad(field_name: str, why: str) -> ConfigError:
        return ConfigError(f"{where}: {field_name} {why}")

    unknown = [str(k) for k in item if k not in CLAIM_KEYS]
    if unknown:
        raise bad(", ".join(unknown), f"is not a claim field; a claim has: {', '.join(CLAIM_KEYS)}")
    for key in ("claim", "study", "where"):
        v = item.get(key)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and key == "study":
            item = {**item, key: f"{v:g}"}
        elif not isinstance(v, str) or not v.strip():
            what = {"claim": "the claim in words", "study": "the study's figure as it gives it",
                    "where": "where the study says it (section, table, page)"}[key]
            raise bad(key, f"is missing or empty: give {what}")
    relation = RELATIONS.get(str(item.get("relation", "")).strip())
    if relation is None:
        raise bad("relation", f"must be one of '>', '<', '≈' (or '~'), got {item.get('relation')!r}")
    a = _cell(item.get("a"), "a", bad)
    has_b, has_level = item.get("b") is not None, item.get("level") is not None
    if has_b == has_level:
        raise bad("b / level", "exactly one is needed: b (a second cell's settings) or level (the study's figure "
                  "for cell a, a number)")
    b = _cell(item["b"], "b", bad) if has_b else None
    if b is not None and b == a:
        raise bad("b", "names the same cell as a")
    level = _number(item.get("level"), "level", bad) if has_level else None
    margin = _number(item.get("margin"), "margin", bad, positive=True) if item.get("margin") is not None else None
    tolerance = (_number(item.get("tolerance"), "tolerance", bad, positive=True)
                 if item.get("tolerance") is not None else None)
    if relation == "≈" and has_b and margin is None:
        raise bad("margin", "is needed for a ≈ b: the largest difference that still counts as equal "
                  "(e.g. 0.005 for half a point of accuracy)")
    if relation == "≈" and has_level and tolerance is None:
        raise bad("tolerance", "is needed for a ≈ level: how far from the study's figure still counts as reaching it")
    if margin is not None and not (relation == "≈" and has_b):
        raise bad("margin", "belongs to a ≈ b only (a level claim takes tolerance)")
    if tolerance is not None and not (relation == "≈" and has_level):
        raise bad("tolerance", "belongs to a ≈ level only (a ≈ b takes margin)")
    metric = item.get("metric", DEFAULT_METRIC)
    if not isinstance(metric, str) or not metric.strip():
        raise bad("metric", f"must be a dotted results key such as test.accuracy, got {metric!r}")
    full = item.get("needs_full_schedule")
    if full is not None and not isinstance(full, bool):
        raise bad("needs_full_schedule", f"must be true or false, got {full!r}")
    note = item.get("note", "")
    if not isinstance(note, str):
        raise bad("note", f"must be text, got {note!r}")
    return Claim(item["claim"].strip(), a, relation, str(item["study"]).strip(), item["where"].strip(), b, level,
                 margin, tolerance, metric.strip(), full, note.strip())


def _cell(value: Any, name: str, bad) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        raise bad(name, f"must be a mapping of swept keys to values naming one cell, e.g. {{optim.lr: 0.01}}, "
                  f"got {value!r}")
    if not all(isinstance(k, str) and k for k in value):
        raise bad(name, f"has a key that is not a dotted setting name: {list(value)!r}")
    return dict(value)


def _number(value: Any, name: str, bad, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise bad(name, f"must be a number, got {value!r}")
    if positive and value <= 0:
        raise bad(name, f"must be above 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Layout:
    """How a sweep's cells are laid out: its swept keys, which of them vary together, grid or one factor at a time."""

    keys: list[str]
    factors: list[list[str]] = field(default_factory=list)  # keys that vary together (an axis; a zip group)
    ofat: bool = False
    base: dict = field(default_factory=dict)  # the base case's settings (one factor at a time)

    @classmethod
    def of(cls, plan: dict) -> "Layout":
        keys = list(plan.get("keys") or [])
        return cls(keys, [list(f) for f in plan.get("factors") or [[k] for k in keys]], bool(plan.get("ofat")),
                   dict(plan.get("base_settings") or {}))


def check_cells(claims: list[Claim], layout: Layout, planned: list[dict], source: str) -> None:
    """Every claim's cells name swept keys and match the settings of one planned cell (checked at load)."""
    keys = layout.keys
    for i, claim in enumerate(claims, 1):
        for name, cell in (("a", claim.a), ("b", claim.b)):
            if cell is None:
                continue
            where = f"{source}: claim {i} ({claim.text[:60]!r}), {name}"
            unknown = [k for k in cell if k not in keys]
            if unknown:
                raise ConfigError(f"{where}: {', '.join(unknown)} is not a key this sweep varies; a cell is named by "
                                  f"the swept keys: {', '.join(keys) or '(none: the sweep varies nothing)'}")
            found = {_settings_key(s, keys) for s in planned if _in_cell(s, cell, layout)}
            if not found:
                raise ConfigError(f"{where}: no planned run has {_describe(cell)}; check the values against the "
                                  "sweep's axes")
            if len(found) > 1:
                raise ConfigError(f"{where}: {_describe(cell)} matches {len(found)} different settings of the sweep; "
                                  "name more keys so the cell is one setting")


def _describe(cell: dict) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in cell.items())


def _settings_key(settings: dict, keys: list[str]) -> str:
    return json.dumps({k: settings.get(k) for k in keys}, sort_keys=True)


_MISSING = object()


def _in_cell(settings: dict, cell: dict, layout: Layout) -> bool:
    """True when a run's settings belong to the cell: the cell's keys have its values, and in a
    one-factor-at-a-time sweep every key outside the cell's factors (zip groups change together) sits at
    the base case."""
    if any(settings.get(k, _MISSING) != v for k, v in cell.items()):
        return False
    if not layout.ofat:
        return True
    together = {k for f in layout.factors if set(f) & set(cell) for k in f}
    return all(settings.get(k, _MISSING) == layout.base[k] for k in layout.keys
               if k not in together and k in layout.base)


# ----------------------------------------------------------------------------- the rule


@dataclass
class CellStats:
    settings: dict[str, Any]
    values: list[float]  # the metric of each finished run (collapsed ones included)
    seeds: list[int]
    total: int  # runs in the cell, whatever their status
    at_chance: list[int] = field(default_factory=list)  # seeds whose test accuracy ended at chance
    diverged: list[int] = field(default_factory=list)  # seeds whose loss became non-finite
    summary: stats.Described | None = None

    @property
    def collapsed(self) -> int:
        return len(self.at_chance) + len(self.diverged)

    @property
    def unstable(self) -> bool:
        return 0 < self.collapsed < self.total


@dataclass
class Verdict:
    claim: Claim
    word: str  # one of WORDS; "unstable" is shown with its counts
    why: str  # one sentence: what decided the word
    a: CellStats
    b: CellStats | None
    test: stats.Difference | None = None
    equivalence_p: float | None = None
    seeds_needed: int | None = None  # for within noise: seeds per cell for power 0.8
    percent: bool = True

    @property
    def label(self) -> str:
        if self.word == UNSTABLE:
            return f"{UNSTABLE} " + ", ".join(f"{c.collapsed}/{c.total}" for c in self.cells if c.unstable)
        return self.word

    @property
    def cells(self) -> list[CellStats]:
        return [c for c in (self.a, self.b) if c is not None]

    def to_dict(self) -> dict:
        c = self.claim
        out = {"claim": c.text, "relation": c.relation, "metric": c.metric, "study": c.study, "where": c.where,
               "a": _cell_dict(self.a), "b": _cell_dict(self.b) if self.b else None, "level": c.level,
               "margin": c.margin, "tolerance": c.tolerance, "verdict": self.word, "label": self.label,
               "why": self.why, "test": asdict(self.test) if self.test else None,
               "equivalence_p": self.equivalence_p, "seeds_needed": self.seeds_needed}
        if c.note:
            out["note"] = c.note
        return out


def _cell_dict(c: CellStats) -> dict:
    s = c.summary
    return {"settings": c.settings, "n": len(c.values), "total": c.total, "values": c.values, "seeds": c.seeds,
            "mean": s.mean if s else None, "sd": s.sd if s else None, "ci95": [s.ci_low, s.ci_high] if s else None,
            "at_chance_seeds": c.at_chance, "diverged_seeds": c.diverged}


def cell_stats(cell: dict, rows: list[dict], metric: str, layout: Layout, classes: int) -> CellStats:
    from cnnlab.reporting.compare import metric_range, metric_value

    members = [r for r in rows if _in_cell(r.get("settings", {}), cell, layout)]
    for key in layout.keys:  # a key a row does not name was not swept when it ran: it cannot disagree
        named = {json.dumps(r["settings"][key], sort_keys=True) for r in members if key in r["settings"]}
        if len(named) > 1:
            raise ConfigError(f"claims: the cell {_describe(cell)} pools runs whose {key} differs ({', '.join(sorted(named))}); "
                              "name it in the claim so the cell is one setting")
    by_seed: dict[Any, list[str]] = {}
    for r in members:
        by_seed.setdefault(r.get("seed"), []).append(str(r.get("run_id")))
    twice = {s: ids for s, ids in by_seed.items() if len(ids) > 1}
    if twice:
        seed, ids = next(iter(twice.items()))
        raise ConfigError(f"claims: the cell {_describe(cell)} holds {len(ids)} runs of seed {seed} ({', '.join(ids)}): "
                          "they differ in a setting the rows do not all name (an older sweep file's runs); name that "
                          "key in the claim, or remove the stale rows from results.jsonl")
    out = CellStats(dict(cell), [], [], len(members))
    for r in sorted(members, key=lambda r: (r.get("seed", 0), r.get("run_id", ""))):
        if r.get("status") == runs.Status.DIVERGED:
            out.diverged.append(r.get("seed"))
            continue
        if r.get("status") not in runs.SUCCEEDED:
            out.total -= 1  # failed, interrupted, pruned or not run yet: neither a result nor a collapse
            continue
        if results.at_chance(metric_value(r, "test.accuracy"), classes):
            out.at_chance.append(r.get("seed"))
        v = metric_value(r, metric)
        if v is not None:
            out.values.append(v)
            out.seeds.append(r.get("seed"))
    if out.values:
        out.summary = stats.describe(out.values, bounds=metric_range(metric))
    return out


def judge(claim: Claim, rows: list[dict], layout: Layout, cut: str | None = None, classes: int = 10) -> Verdict:
    """The verdict on one claim from a sweep's rows (see the module docstring for the rule)."""
    a = cell_stats(claim.a, rows, claim.metric, layout, classes)
    b = cell_stats(claim.b, rows, claim.metric, layout, classes) if claim.b is not None else None
    v = Verdict(claim, NOT_TESTED, "", a, b, percent=claim.metric.endswith("accuracy"))
    cells = v.cells
    if any(c.total == 0 for c in cells):
        v.why = "no finished run in " + " and ".join(n for n, c in zip("ab", cells) if c.total == 0)
        return v
    if any(c.unstable for c in cells):
        v.word = UNSTABLE
        v.why = "; ".join(_collapse_text(n, c) for n, c in zip("ab", cells) if c.unstable) + \
            ": a mean over collapsed and trained runs describes no run"
        return v
    short = [f"{n} has {len(c.values)}" for n, c in zip("ab", cells) if len(c.values) < MIN_SEEDS]
    if short:
        v.why = f"fewer than {MIN_SEEDS} runs per cell ({', '.join(short)})"
        return v
    if cut and claim.full_schedule_only:
        what = "a level" if claim.is_level else "this claim"
        v.why = f"the schedule was cut ({cut}); {what} belongs to the study's full schedule"
        return v
    _decide(v)
    return v


def _collapse_text(name: str, c: CellStats) -> str:
    parts = []
    if c.at_chance:
        parts.append(f"seed{'s' if len(c.at_chance) > 1 else ''} {', '.join(map(str, c.at_chance))} at chance")
    if c.diverged:
        parts.append(f"seed{'s' if len(c.diverged) > 1 else ''} {', '.join(map(str, c.diverged))} diverged")
    return f"{name}: {' and '.join(parts)} ({c.collapsed}/{c.total})"


def _decide(v: Verdict) -> None:
    claim, a, b = v.claim, v.a, v.b
    test = stats.difference(a.values, b.values if b else None, level=claim.level)
    v.test = test
    sds = [c.summary.sd or 0.0 for c in v.cells]
    significant = test.p < stats.ALPHA
    if claim.relation == "≈":
        margin = claim.margin if b is not None else claim.tolerance
        v.equivalence_p = stats.equivalence_p(a.values, b.values if b else None, level=claim.level, margin=margin)
        if v.equivalence_p < stats.ALPHA:
            v.word = HOLDS
            v.why = f"equivalent within ±{_amount(margin, v.percent)} (TOST p {_p(v.equivalence_p)})"
        elif significant:
            v.word = DIFFERS if b is not None else LEVEL_DIFFERS
            v.why = (f"{'the difference' if b is not None else 'the study figure'} is outside the 95 % interval "
                     f"(p {_p(test.p)}), and not shown within ±{_amount(margin, v.percent)} "
                     f"(TOST p {_p(v.equivalence_p)})")
        else:
            v.word = WITHIN_NOISE
            v.seeds_needed = stats.seeds_needed(test.diff, sds, margin=margin, one_sample=b is None, power=POWER)
            v.why = (f"neither a difference (p {_p(test.p)}) nor equivalence within ±{_amount(margin, v.percent)} "
                     f"(TOST p {_p(v.equivalence_p)}) is shown")
        return
    claimed = 1 if claim.relation == ">" else -1
    if significant and test.diff * claimed > 0:
        v.word, v.why = HOLDS, f"Welch p {_p(test.p)} in the claimed direction"
    elif significant:
        v.word, v.why = REVERSED, f"Welch p {_p(test.p)} in the opposite direction"
    else:
        v.word = WITHIN_NOISE
        v.seeds_needed = stats.seeds_needed(test.diff, sds, one_sample=b is None, power=POWER)
        v.why = f"p {_p(test.p)} ≥ {stats.ALPHA}"
    if b is None and v.word != WITHIN_NOISE:
        v.why = v.why.replace("Welch p", "one-sample t-test p")


def _p(p: float) -> str:
    """A p-value as "= 0.03" or "< 0.0001", to follow "p"."""
    if p < 0.0001:
        return "< 0.0001"
    return f"= {p:.2g}" if p < 0.01 else f"= {p:.2f}"


def _amount(x: float, percent: bool) -> str:
    return f"{100 * x:.2f} points" if percent else f"{x:.4g}"


# ----------------------------------------------------------------------------- a sweep's claims


@dataclass
class ClaimSet:
    """A sweep's claims with what judging them needs from its plan."""

    claims: list[Claim]
    layout: Layout
    cut: str | None
    source: str


def from_plan(plan: dict, source: str) -> ClaimSet:
    """The claims a sweep's plan (plan.json, or Sweep.to_dict()) carries."""
    return ClaimSet(parse_claims(plan.get("claims"), source), Layout.of(plan), plan.get("cut") or None, source)


def load_claims(sweep_dir: str | Path) -> ClaimSet:
    """The claims the sweep folder's plan.json recorded (a sweep file's own: ``from_plan(load_sweep(file)
    .to_dict(), file)``, by the caller: the sweep grammar imports this module, not the other way round)."""
    plan = results.load_plan(sweep_dir)
    if plan is None:
        raise ConfigError(f"{sweep_dir}: no plan.json, so no claims to judge; run the sweep (cnnlab sweep FILE --out "
                          f"{sweep_dir}) or name its sweep file with --sweep FILE")
    return from_plan(plan, str(Path(sweep_dir) / results.PLAN))


def judge_sweep(sweep_dir: str | Path, claim_set: ClaimSet, rows: list[dict] | None = None) -> list[Verdict]:
    """Every claim of ``claim_set`` judged on the sweep folder's results.jsonl."""
    sweep_dir = Path(sweep_dir)
    rows = results.load_results(sweep_dir) if rows is None else rows
    classes = results.num_classes(sweep_dir, rows)
    return [judge(c, rows, claim_set.layout, claim_set.cut, classes) for c in claim_set.claims]


# ----------------------------------------------------------------------------- shown


def cell_text(c: CellStats | None, percent: bool) -> str:
    if c is None:
        return ""
    s = c.summary
    if s is None:
        text = f"no result ({c.total} runs)" if c.total else "no runs"
    elif s.n < 2:
        text = f"{_value(s.mean, percent)} (1)"
    else:
        text = f"{_value(s.mean, percent)} ± {_value(s.sd, percent)} ({s.n}) [{_value(s.ci_low, percent)}, " \
               f"{_value(s.ci_high, percent)}]"
    if c.at_chance:
        text += f"; at chance {len(c.at_chance)}/{c.total}"
    if c.diverged:
        text += f"; diverged {len(c.diverged)}/{c.total}"
    return text


def _value(x: float | None, percent: bool) -> str:
    if x is None:
        return "—"
    return f"{100 * x:.2f}" if percent else f"{x:.4g}"


def _signed(x: float, percent: bool) -> str:
    return f"{100 * x:+.2f}" if percent else f"{x:+.4g}"


def difference_text(v: Verdict) -> str:
    t = v.test
    if t is None:
        return "—"
    unit = " points" if v.percent else ""
    return f"{_signed(t.diff, v.percent)}{unit} [{_signed(t.ci_low, v.percent)}, {_signed(t.ci_high, v.percent)}]"


def against_text(v: Verdict) -> str:
    """The second column of a claim: cell b's figures, or the level (with its tolerance)."""
    c = v.claim
    if v.b is not None:
        return cell_text(v.b, v.percent)
    level = _value(c.level, v.percent) + (" %" if v.percent else "")
    return f"level {level}" + (f" ± {_amount(c.tolerance, v.percent)}" if c.tolerance else "")


def verdict_text(v: Verdict) -> str:
    text = f"**{v.label}**: {v.why}"
    if v.seeds_needed:
        text += f"; about {v.seeds_needed} seeds per cell would resolve the observed difference (power {POWER})"
    elif v.word == WITHIN_NOISE:
        text += "; no practical number of seeds resolves a difference this small"
    return text


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(verdicts: list[Verdict], notes: bool = True) -> str:
    """The verdict table: one row per claim, Markdown."""
    head = ["claim", "study (where)", "a", "b or level", "a − b [95 % CI]", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for v in verdicts:
        c = v.claim
        claim = f"{c.text} (a {c.relation} b)" if v.b is not None else f"{c.text} (a {c.relation} level)"
        study = f"{c.study} ({c.where})"
        cells = [claim, study, cell_text(v.a, v.percent), against_text(v), difference_text(v), verdict_text(v)]
        if c.note:
            cells[-1] += f". {c.note}"
        lines.append("| " + " | ".join(_escape(x) for x in cells) + " |")
    out = "\n".join(lines) + "\n"
    if notes and verdicts:
        out += ("\nCells: mean ± sample sd (finished runs) [95 % CI]"
                + (", accuracy in %" if any(v.percent for v in verdicts) else "")
                + f". The verdict rule is cnnlab.reporting.claims.judge: fewer than {MIN_SEEDS} runs in a cell, or a level on a "
                "cut schedule, is not tested; a cell where some runs collapsed (at chance, diverged) is unstable; "
                "> / < by Welch's t-test (p < 0.05); ≈ by two one-sided tests against the margin (TOST, p < 0.05).\n")
    return out


def to_json(verdicts: list[Verdict]) -> str:
    return json.dumps([v.to_dict() for v in verdicts], indent=2, default=str)
