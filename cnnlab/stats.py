"""Small-sample statistics for sweep tables: is a difference between cells real?

A sweep cell holds one number per seed (say five test accuracies). :func:`describe`
gives their mean, sample standard deviation and a 95 % confidence interval for the
mean from Student's t distribution (n - 1 degrees of freedom), which is the right
interval for a handful of runs whose spread is estimated from the runs themselves.
:func:`welch_p` asks whether two cells differ, with Welch's t-test (unequal
variances, two-sided), and :func:`against_best` applies it to every cell against
the best one. With a single run there is no spread to estimate, so no interval and
no test: those fields stay ``None`` rather than pretending to a precision we lack.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Hashable, Mapping, Sequence

from scipy import stats as _scipy

CONFIDENCE = 0.95  # two-sided level of the intervals
ALPHA = 0.05  # a p-value at or above this is "not significantly different"


@dataclass(frozen=True)
class Described:
    n: int
    mean: float
    sd: float | None  # sample sd (ddof=1); None for n < 2
    ci_low: float | None  # 95 % Student-t interval for the mean; None for n < 2
    ci_high: float | None
    clipped: bool = False  # the interval was cut at the metric's possible range (``bounds``)


def describe(values: Sequence[float], confidence: float = CONFIDENCE,
             bounds: tuple[float | None, float | None] = (None, None)) -> Described:
    """Mean, sample sd and a Student-t confidence interval of ``values`` (n ≥ 1).

    ``bounds`` (low, high; None = open) is the range the quantity can take (a time ≥ 0, an accuracy in
    [0, 1]): the interval is cut there. Its true mean lies in that range too, so the cut drops only
    impossible values and keeps the interval's coverage; a t-interval of 2 or 3 runs easily reaches past."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        raise ValueError("describe() needs at least one value")
    mean = math.fsum(xs) / n
    if n < 2:
        return Described(n, mean, None, None, None)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (n - 1))
    half = _scipy.t.ppf(0.5 + confidence / 2, n - 1) * sd / math.sqrt(n)
    low, high = mean - half, mean + half
    lo, hi = bounds
    cut_low, cut_high = lo is not None and bool(low < lo), hi is not None and bool(high > hi)
    return Described(n, mean, sd, lo if cut_low else low, hi if cut_high else high, cut_low or cut_high)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided p-value of Welch's t-test between two samples; None when either has n < 2."""
    if len(a) < 2 or len(b) < 2:
        return None
    if min(a) == max(a) and min(b) == max(b):
        # Both samples have zero spread (e.g. the same accuracy on every seed): t is 0/0.
        # Equal constants are the same; different constants differ beyond any doubt.
        return 1.0 if a[0] == b[0] else 0.0
    return float(_scipy.ttest_ind(list(a), list(b), equal_var=False).pvalue)


@dataclass(frozen=True)
class Versus:
    """A cell's comparison with the best cell."""

    p: float | None  # Welch's p-value vs the best; None for the best itself or when untestable
    same_as_best: bool | None  # p >= ALPHA; None when untested


def best_key(groups: Mapping[Hashable, Sequence[float]], higher_is_better: bool = True) -> Hashable | None:
    """The group with the highest (or lowest) mean; None when there are no groups."""
    means = {k: math.fsum(v) / len(v) for k, v in groups.items() if len(v)}
    if not means:
        return None
    return (max if higher_is_better else min)(means, key=means.__getitem__)


def against_best(groups: Mapping[Hashable, Sequence[float]], best: Hashable,
                 alpha: float = ALPHA) -> dict[Hashable, Versus]:
    """Welch's test of every group against ``best`` (the best group itself gets p=None)."""
    out = {}
    for key, values in groups.items():
        if key == best:
            out[key] = Versus(None, None)
            continue
        p = welch_p(values, groups[best])
        out[key] = Versus(p, None if p is None else p >= alpha)
    return out
