"""cnnlab.plots: the sweep figures' axes say what the numbers can be."""
from cnnlab import plots


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
