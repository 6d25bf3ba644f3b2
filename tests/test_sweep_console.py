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


def test_the_sweep_report_says_what_every_run_held_fixed(tmp_path, data_root):
    import yaml

    from cnnlab.reporting.html import write_sweep_report
    from cnnlab.sweeps.run import run_sweep

    base = {"data": {"name": "mnist", "train_limit": 200, "val_size": 100}, "model": {"name": "linear"},
            "optim": {"name": "sgd"},
            "train": {"epochs": 1, "batch_size": 100, "progress": False, "precision": "fp32", "threads": 1}}
    path = tmp_path / "sw.yaml"
    path.write_text(yaml.safe_dump({"base": base, "axes": {"optim.lr": [0.1, 0.01]}}))
    run_sweep(path, tmp_path / "out")
    html = write_sweep_report(tmp_path / "out", log=lambda *_: None).read_text()
    line = re.search(r'<p id="held-fixed">(.*?)</p>', html).group(1)
    for shown in ("data.name=mnist", "data.train_limit=200", "model.name=linear", "optim.name=sgd",
                  "train.epochs=1", "train.batch_size=100", "data.val_size=100"):
        assert f"<code>{shown}</code>" in line, line
    assert "optim.lr" not in line and "seed" not in line and "train.threads" not in line  # swept, or no setting
    assert line.index("data.name") < line.index("model.name") < line.index("train.epochs")  # the essentials first


def test_the_sweep_curve_legend_is_readable_and_off_the_curves():
    import numpy as np

    from cnnlab.reporting.plots import sweep_curves_figure

    steps = np.arange(1, 11)
    curves = {f"model.name=resnet20, optim.lr={lr}, data.augment.crop_padding=4": {
        "step": steps, "val_loss": 1 / steps + lr, "val_accuracy": 1 - 1 / steps - lr} for lr in (0.1, 0.03, 0.01, 0.003)}
    fig = sweep_curves_figure(curves)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    (legend,) = fig.legends
    assert len(legend.get_texts()) == 4 and all(t.get_fontsize() >= 10 for t in legend.get_texts())
    box = legend.get_window_extent(renderer)
    for ax in fig.axes:  # beside the panels: it hides no curve
        assert not box.overlaps(ax.get_window_extent(renderer)), ax.get_title()
    assert not any(ax.get_legend() for ax in fig.axes)
