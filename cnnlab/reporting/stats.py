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


# ----------------------------------------------------------------------------- claims: differences, equivalence, power
#
# cnnlab.reporting.claims judges a study's claim ("a beats b", "a is as good as b", "a reaches 98.56 %") with these.
# Each wraps scipy's t-tests; the samples are one number per seed, so Student / Welch t is the right family.


@dataclass(frozen=True)
class Difference:
    """mean(a) - mean(b) (or mean(a) - level) with its Welch / one-sample t statistics."""

    diff: float
    ci_low: float  # 95 % interval of the difference (Welch-Satterthwaite df; n - 1 for a level)
    ci_high: float
    p: float  # two-sided p-value of "no difference"
    se: float  # standard error of the difference (0 when every value of both samples is the same)
    df: float


def _welch_df(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """Standard error of mean(a) - mean(b) and its Welch-Satterthwaite degrees of freedom."""
    va, vb = (describe(x).sd ** 2 / len(x) for x in (a, b))
    se = math.sqrt(va + vb)
    if se == 0:
        return 0.0, float(len(a) + len(b) - 2)
    return se, (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))


def difference(a: Sequence[float], b: Sequence[float] | None = None, level: float | None = None,
               confidence: float = CONFIDENCE) -> Difference:
    """Welch's test of a against b, or Student's one-sample test of a against ``level`` (n ≥ 2 each).

    Samples without spread (every seed the same accuracy, e.g. at chance) give t = 0/0 in scipy: the
    difference is then exact, with a zero-width interval and p = 1 when it is 0 and 0 otherwise."""
    a = [float(x) for x in a]
    if b is not None:
        b = [float(x) for x in b]
        se, df = _welch_df(a, b)
        diff = math.fsum(a) / len(a) - math.fsum(b) / len(b)
        if se == 0:
            return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, 0.0, df)
        test = _scipy.ttest_ind(a, b, equal_var=False)
    else:
        diff = math.fsum(a) / len(a) - level
        se, df = (describe(a).sd or 0.0) / math.sqrt(len(a)), float(len(a) - 1)
        if se == 0:
            return Difference(diff, diff, diff, 1.0 if diff == 0 else 0.0, 0.0, df)
        test = _scipy.ttest_1samp(a, level)
    ci = test.confidence_interval(confidence_level=confidence)
    low, high = float(ci.low), float(ci.high)
    if b is None:  # scipy's one-sample interval is of the mean; the difference's is shifted by the level
        low, high = low - level, high - level
    return Difference(diff, low, high, float(test.pvalue), se, float(df))


def equivalence_p(a: Sequence[float], b: Sequence[float] | None = None, level: float | None = None,
                  margin: float = 0.0) -> float:
    """Two one-sided tests (TOST): the p-value of "the difference lies outside ±margin".

    Small means the difference is shown to lie inside ±margin: equivalence is concluded only from the two
    one-sided rejections, never from a large p of the test of no difference."""
    a = [float(x) for x in a]
    if b is not None:
        b = [float(x) for x in b]
        se, _ = _welch_df(a, b)
    else:
        se = (describe(a).sd or 0.0) / math.sqrt(len(a))
    if se == 0:
        diff = math.fsum(a) / len(a) - (math.fsum(b) / len(b) if b is not None else level)
        return 0.0 if abs(diff) < margin else 1.0
    if b is not None:
        above = _scipy.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue
        below = _scipy.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue
    else:
        above = _scipy.ttest_1samp(a, level - margin, alternative="greater").pvalue
        below = _scipy.ttest_1samp(a, level + margin, alternative="less").pvalue
    return float(max(above, below))


MAX_SEEDS = 1000  # seeds per cell beyond which a difference is called unresolvable in practice


def seeds_needed(diff: float, sds: Sequence[float], margin: float | None = None, alpha: float = ALPHA,
                 power: float = 0.8, one_sample: bool = False) -> int | None:
    """Seeds per cell at which a test would resolve a true difference of ``diff`` with probability ``power``.

    ``sds`` are the cells' sample sds (one for a level claim, ``one_sample``), taken as the true ones.
    Without ``margin``: the two-sided test of no difference; with it: the two one-sided tests of equivalence
    within ±margin. Power from the noncentral t distribution (scipy.stats.nct). None when no count up to
    MAX_SEEDS reaches it (a difference of 0, or one on the margin)."""
    var = sum(s ** 2 for s in sds)
    if var == 0:
        return None
    for n in range(2, MAX_SEEDS + 1):
        se = math.sqrt(var / n)
        df = n - 1 if one_sample else 2 * n - 2  # Welch's df with equal n and sds, at most 2n - 2
        if margin is None:
            crit = _scipy.t.ppf(1 - alpha / 2, df)
            ncp = diff / se
            got = _scipy.nct.sf(crit, df, ncp) + _scipy.nct.cdf(-crit, df, ncp)
        else:
            crit = _scipy.t.ppf(1 - alpha, df)
            ncp = (diff + margin) / se  # the statistic of the lower test; the upper one is it less 2·margin/se
            got = _scipy.nct.cdf(2 * margin / se - crit, df, ncp) - _scipy.nct.cdf(crit, df, ncp)
        if got >= power:
            return n
    return None
