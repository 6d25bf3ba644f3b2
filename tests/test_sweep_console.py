"""The sweep's console and report details of issue 25, item 8 that were still wrong: the time left on the first
runs of a parallel sweep, what the sweep report says was held fixed, and the curve legend's size."""
from __future__ import annotations

import re

import pytest

from cnnlab.sweeps.run import eta


def left_s(text: str) -> float:
    m = re.search(r"about (?:(\d+) min )?(\d+) s left", text)
    return int(m.group(1) or 0) * 60 + int(m.group(2))


@pytest.mark.parametrize("workers, runs, seconds", [(2, 8, 10.0), (4, 12, 30.0), (2, 3, 5.0)])
def test_the_time_left_of_a_parallel_sweep_is_right_from_its_first_run(workers, runs, seconds):
    """Runs of equal length on ``workers`` slots, each slot starting its next run when one ends: after every run
    that ends, the estimate is the true time left (the first said twice to three times as much)."""
    ends = sorted(seconds * (1 + i // workers) for i in range(runs))  # slot k's runs end at seconds, 2 x seconds...
    for n, now in enumerate(ends[:-1], start=1):
        done, left = [("a", "m", seconds)] * n, [("a", "m")] * (runs - n)
        truth = ends[-1] - now
        got = left_s(eta(done, left, now, workers, ends[:n]))
        assert abs(got - truth) <= 1, (n, got, truth)
    # one run at a time keeps the old rule: the finished runs' pace, the time between runs included
    assert left_s(eta([("a", "m", 10.0)], [("a", "m")] * 3, 12.0)) == 36
