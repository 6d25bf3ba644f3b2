"""cnnlab.reporting.plots: the sweep figures' axes say what the numbers can be."""
from cnnlab import runs
from cnnlab.reporting import plots


def test_bars_of_an_accuracy_never_reach_past_one():
    # Study C's sweep: a chance-level MLP (11 %) beside two LeNet-5s (94 %, 97 %) once drew the axis to 140 %.
    groups = {"all runs": [("lenet5", 0.9445, 0.0043), ("mlp", 0.1135, 0.0), ("regularised", 0.9740, 0.0023)]}
    fig = plots.bars_figure(groups, "base", "test.accuracy")
    low, top = fig.axes[0].get_ylim()
    assert top == 1.0 and low == 0.0
    plots.png_bytes(fig)


def test_bars_of_a_loss_keep_their_headroom():
    groups = {"all runs": [("lenet5", 0.23, 0.01), ("mlp", 2.30, 0.001)]}
    low, top = plots.bars_figure(groups, "base", "final_train_loss").axes[0].get_ylim()
    assert top > 2.30 + 0.5 and low == 0.0


def test_fraction_metrics_are_told_from_losses_and_times():
    for name in ("test.accuracy", "best.val_accuracy", "test.f1_macro", "val.precision_macro", "recall"):
        assert plots.is_fraction_metric(name), name
    for name in ("final_train_loss", "test.loss", "time_s"):
        assert not plots.is_fraction_metric(name), name


def test_log_axes_label_the_swept_values_as_plain_numbers():
    # Study E's lr sweep: the log formatter's math text came out literally as "$\mathdefault{10^{-4}}$".
    lrs = [0.0001, 0.0002, 0.0004, 0.0008, 0.0016, 0.0032, 0.0064, 0.0128]
    fig = plots.factor_figure({"all runs": [(lr, 0.7, 0.01) for lr in lrs]}, "optim.lr", "test.accuracy", True)
    plots.png_bytes(fig)  # draws the figure, so every tick label exists
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.0001", "0.0002", "0.0004", "0.0008", "0.0016",
                                                            "0.0032", "0.0064", "0.0128"]
    assert not any("$" in t.get_text() for t in ax.get_xticklabels(minor=True))


def _bar_heights_and_ticks(fig):
    ax = fig.axes[0]
    plots.png_bytes(fig)  # draws the figure, so the tick labels exist
    return [p.get_height() for p in ax.patches], [t.get_text() for t in ax.get_xticklabels()]


def test_bars_follow_the_values_not_the_order_results_arrived():
    # Study A's depth series arrived 20, 56, 32, 44 and was drawn so.
    arrived = [("resnet20", 0.91, 0.01), ("resnet56", 0.93, 0.01), ("resnet110", 0.935, 0.01),
               ("resnet32", 0.92, 0.01), ("resnet44", 0.925, 0.01)]
    listed = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    heights, ticks = _bar_heights_and_ticks(plots.bars_figure({"all runs": arrived}, "model.name", "test.accuracy",
                                                              order=listed))
    assert ticks == listed and heights == [0.91, 0.92, 0.925, 0.93, 0.935]
    # without the sweep file's order: alphabetical, digit runs read as numbers (resnet110 last, not first)
    assert _bar_heights_and_ticks(plots.bars_figure({"all runs": arrived}, "model.name", "test.accuracy"))[1] == listed
    # the sweep file's order wins over the alphabet; numbers sort numerically, "default" (null) after them
    assert plots.category_order(["sgd", "adam", "adadelta"], ["sgd", "adadelta", "adam"]) == ["sgd", "adadelta", "adam"]
    assert plots.category_order(["56", "default", "20", "110", "32"]) == ["20", "32", "56", "110", "default"]
    # every series' bars follow the same order
    groups = {"lr=0.1": [("b", 0.5, 0.0), ("a", 0.6, 0.0)], "lr=0.01": [("c", 0.7, 0.0), ("a", 0.8, 0.0)]}
    heights, ticks = _bar_heights_and_ticks(plots.bars_figure(groups, "x", "test.accuracy", order=["c", "b", "a"]))
    assert ticks == ["c", "b", "a"] and heights == [0.5, 0.6, 0.7, 0.8]  # first series b, a; then c, a


def test_the_y_axis_holds_every_error_bar_whole():
    # A chance-level sweep: means 14-16 % with sd ~3 points; the axis ran 0.12-0.18 and cut the bars at 0.20.
    points = [("a", 0.14, 0.03), ("b", 0.16, 0.035), ("c", 0.15, 0.001)]
    low, top = plots.bars_figure({"all runs": points}, "x", "test.accuracy").axes[0].get_ylim()
    assert low <= min(m - s for _, m, s in points) and top >= max(m + s for _, m, s in points)
    assert top - low < 0.2  # still zoomed to the figures, not drawn from 0 to 1
    # near 100 %: the error bar is drawn cut at 1 (an accuracy cannot pass it), and the axis stops there
    fig = plots.bars_figure({"all runs": [("a", 0.985, 0.02), ("b", 0.97, 0.01)]}, "x", "test.accuracy")
    ax = fig.axes[0]
    assert ax.get_ylim()[1] == 1.0
    tops = [seg[:, 1].max() for coll in ax.collections for seg in coll.get_segments()]
    assert max(tops) == 1.0 and ax.get_ylim()[0] <= 0.96
    # a metric that may go below zero keeps the whole bar below zero too
    low, top = plots.bars_figure({"all runs": [("a", 0.01, 0.05), ("b", 0.02, 0.01)]}, "x", "gain").axes[0].get_ylim()
    assert low <= 0.01 - 0.05 and top >= 0.03


def test_a_cosine_runs_learning_rate_axis_reads_as_numbers_beside_the_accuracy_panel(tmp_path, data_root):
    # Issue 25 (6): with math text off for every figure, a cosine run's log-scale lr ticks printed as raw
    # "$\mathdefault{4\times10^{-2}}$" and ran over the accuracy panel, in curves.png and report.html.
    import cnnlab
    from cnnlab.reporting import results

    from conftest import tiny_overrides

    run = cnnlab.train({"name": "cosine"}, tiny_overrides(**{
        "sched.name": "cosine", "sched.interval": "step", "train.eval_every": 2, "data.train_limit": 2000}),
        out=tmp_path / "run")
    assert (run.dir / "curves.png").stat().st_size > 1000
    fig = plots.curves_figure(runs.read_metrics(run.dir), run.summary["best"]["step"])
    ticks, boxes, legend, inner = _lr_ticks_and_boxes(fig)
    assert fig.axes[2].get_yscale() == "log"
    assert ticks, "the log axis shows no labelled tick"
    for text, width in ticks:
        # the source of a math label is "$\mathdefault{...}$"; drawn as math it is a short number, a few
        # characters wide, while drawn as its source it is over 150 pixels
        assert width < 70, (text, width)
    assert boxes[0].x1 < boxes[1].x0 and boxes[1].x1 < boxes[2].x0, [(b.x0, b.x1) for b in boxes]
    assert inner.x0 <= legend.x0 and legend.x1 <= inner.x1 and inner.y0 <= legend.y0 and legend.y1 <= inner.y1


@plots.literal_text  # measured in the text settings curves.png is drawn with
def _lr_ticks_and_boxes(fig):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)  # the canvas png_bytes draws curves.png on
    canvas.draw()
    renderer = canvas.get_renderer()
    ax_loss, ax_acc, ax_lr = fig.axes[:3]
    low, high = ax_lr.get_ylim()
    ticks = [(t.get_text(), t.get_window_extent(renderer).width)
             for t in ax_lr.get_yticklabels() + ax_lr.get_yticklabels(minor=True)
             if t.get_visible() and t.get_text() and low <= t.get_position()[1] <= high]
    boxes = [ax.get_tightbbox(renderer) for ax in (ax_loss, ax_acc, ax_lr)]
    return ticks, boxes, ax_acc.get_legend().get_window_extent(renderer), ax_acc.get_window_extent(renderer)


def test_names_with_dollar_signs_are_drawn_as_written_while_axes_keep_math_text():
    import matplotlib

    fig = plots.confusion_figure([[3, 1], [0, 4]], ["$x^{2}$", "cost $5"])
    plots.png_bytes(fig)
    ax = fig.axes[0]
    for t in ax.get_xticklabels():
        shown_text, is_math = t._preprocess_math(t.get_text())  # what matplotlib will draw, and whether as math
        assert not is_math and shown_text in ("$x^{2}$", "cost $5")
    assert matplotlib.rcParams["text.parse_math"]
