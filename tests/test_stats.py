"""cnnlab.reporting.stats against scipy / numpy computed independently, and its small-n edge cases."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from cnnlab.reporting import stats


def test_describe_matches_numpy_and_scipy_t_interval():
    xs = [0.981, 0.979, 0.984, 0.977, 0.983]
    d = stats.describe(xs)
    assert d.n == 5
    assert d.mean == pytest.approx(np.mean(xs))
    assert d.sd == pytest.approx(np.std(xs, ddof=1))
    lo, hi = sps.t.interval(0.95, df=4, loc=np.mean(xs), scale=sps.sem(xs))
    assert (d.ci_low, d.ci_high) == (pytest.approx(lo), pytest.approx(hi))
    # the t interval is wider than a normal-approximation one for n = 5
    z_half = 1.959964 * np.std(xs, ddof=1) / math.sqrt(5)
    assert d.ci_high - d.mean > z_half


def test_one_value_has_no_spread_interval_or_test():
    d = stats.describe([0.5])
    assert (d.n, d.mean, d.sd, d.ci_low, d.ci_high) == (1, 0.5, None, None, None)
    assert stats.welch_p([0.5], [0.4, 0.45]) is None
    with pytest.raises(ValueError):
        stats.describe([])


def test_welch_p_is_scipys_unequal_variance_test():
    a = [0.97, 0.975, 0.972, 0.969]
    b = [0.95, 0.99, 0.93, 0.96, 0.985]
    expected = sps.ttest_ind(a, b, equal_var=False).pvalue
    assert stats.welch_p(a, b) == pytest.approx(expected)
    # and it differs from Student's pooled-variance test on these unequal spreads
    assert stats.welch_p(a, b) != pytest.approx(sps.ttest_ind(a, b, equal_var=True).pvalue)


def test_zero_spread_samples():
    assert stats.welch_p([0.9, 0.9], [0.9, 0.9, 0.9]) == 1.0
    assert stats.welch_p([0.9, 0.9], [0.8, 0.8]) == 0.0


def test_against_best_marks_cells_that_cannot_be_told_apart():
    groups = {
        "a": [0.990, 0.991, 0.989, 0.990],  # best
        "b": [0.989, 0.991, 0.990, 0.988],  # overlaps a
        "c": [0.950, 0.951, 0.949, 0.950],  # clearly worse
        "d": [0.99],  # a single run: untested
    }
    best = stats.best_key(groups)
    assert best == "a"
    v = stats.against_best(groups, best)
    assert v["a"].p is None and v["a"].same_as_best is None
    assert v["b"].same_as_best is True and v["b"].p >= 0.05
    assert v["c"].same_as_best is False and v["c"].p < 0.05
    assert v["d"].p is None and v["d"].same_as_best is None
    assert stats.best_key({"loss1": [0.3], "loss2": [0.2]}, higher_is_better=False) == "loss2"
    assert stats.best_key({}) is None


def test_interval_is_cut_at_the_bounds_only_where_it_crosses_them():
    times = [0.5, 3.5]  # two runs: the t-interval is mean ± 12.7 × sd / √2, far below 0
    open_ = stats.describe(times)
    assert open_.ci_low < 0 and not open_.clipped
    cut = stats.describe(times, bounds=(0.0, None))
    assert cut.clipped and cut.ci_low == 0.0 and cut.ci_high == open_.ci_high and cut.mean == open_.mean
    accuracies = [0.97, 0.999]  # reaches above 1
    both = stats.describe(accuracies, bounds=(0.0, 1.0))
    assert both.clipped and both.ci_high == 1.0 and both.ci_low == stats.describe(accuracies).ci_low
    inside = stats.describe([0.5, 0.51, 0.49], bounds=(0.0, 1.0))
    assert not inside.clipped and inside == stats.describe([0.5, 0.51, 0.49])
    assert not stats.describe([2.0], bounds=(0.0, None)).clipped  # one run: no interval to cut
