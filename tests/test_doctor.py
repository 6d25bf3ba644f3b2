"""The run doctor: each finding fires on the history pattern it names, and a healthy run raises none.

Histories are written by hand in the metrics.jsonl shape (one row per evaluation), so
each test shows the exact curve that triggers a rule; the boundary tests move one value
across a named threshold to show the constant is the one in charge.
"""
import math
from pathlib import Path

import pytest

from cnnlab import runs
from cnnlab.reporting import doctor
from cnnlab.reporting.doctor import diagnose


def rows(train_loss, val_acc, *, train_acc=None, val_loss=None, steps_per_epoch=100, seconds_per_eval=10.0):
    """A history with one evaluation per epoch; unspecified curves get plausible healthy values."""
    n = len(train_loss)
    train_acc = train_acc or [min(0.99, a + 0.01) for a in val_acc]
    val_loss = val_loss or [t * 1.05 for t in train_loss]
    return [{"step": (i + 1) * steps_per_epoch, "epoch": float(i + 1), "lr": 0.001,
             "train_loss": train_loss[i], "train_accuracy": train_acc[i], "val_loss": val_loss[i],
             "val_accuracy": val_acc[i], "elapsed_s": (i + 1) * seconds_per_eval} for i in range(n)]


HEALTHY = rows(
    train_loss=[0.50, 0.25, 0.16, 0.12, 0.10, 0.08, 0.07, 0.06, 0.055, 0.05],
    val_acc=[0.900, 0.940, 0.960, 0.970, 0.975, 0.978, 0.980, 0.981, 0.982, 0.9815],
    val_loss=[0.33, 0.20, 0.14, 0.11, 0.095, 0.085, 0.08, 0.078, 0.076, 0.077],
)


def codes(history, *, summary=None, num_classes=10, kind="logits", loss="cross_entropy"):
    return [f["code"] for f in diagnose(history, summary or {"status": "completed"}, num_classes, kind, loss)]


def test_healthy_history_raises_nothing():
    assert codes(HEALTHY) == []


def test_findings_have_the_contract_shape():
    history = rows([1.0, 1.5, 2.0], [0.1, 0.1, 0.1])
    findings = diagnose(history, {"status": "completed"}, 10, "probs", "cross_entropy")
    assert findings, "this history should raise several findings"
    for f in findings:
        assert set(f) == {"code", "severity", "message"}
        assert f["severity"] in ("info", "warning", "error")
        assert len(f["message"]) > 30
    severities = [f["severity"] for f in findings]
    order = {"error": 0, "warning": 1, "info": 2}
    assert severities == sorted(severities, key=order.get), "most severe first"


@pytest.mark.parametrize("bad", [math.nan, math.inf, "nan", "inf", "-inf"])
def test_diverged_on_a_non_finite_loss(bad):
    history = [dict(r) for r in HEALTHY[:4]]
    history[2]["train_loss"] = bad  # runs.write_json stores NaN as the string "nan"
    findings = diagnose(history, {"status": "diverged"}, 10, "logits", "cross_entropy")
    assert [f["code"] for f in findings] == ["diverged"]
    assert findings[0]["severity"] == "error"
    assert "step 300" in findings[0]["message"]


def test_diverged_from_the_status_alone():
    # The trainer stops before logging a NaN row when it sees a non-finite batch loss.
    assert codes(HEALTHY[:3], summary={"status": "diverged"}) == ["diverged"]


def test_stuck_at_chance():
    history = rows([2.303, 2.302, 2.302], [0.11, 0.098, 0.105], train_acc=[0.11, 0.10, 0.11])
    found = codes(history)
    assert "stuck_at_chance" in found
    # With two classes the same accuracies are far below chance (0.5): not "at chance".
    assert "stuck_at_chance" not in codes(history, num_classes=2)


def test_stuck_at_chance_ignores_evaluations_in_the_first_epoch():
    history = rows([2.3, 0.5, 0.3], [0.10, 0.90, 0.95])
    for r, step, epoch in zip(history, (20, 40, 100), (0.2, 0.4, 1.0)):
        r["step"], r["epoch"] = step, epoch
    assert "stuck_at_chance" not in codes(history)
    history[-1]["val_accuracy"] = 0.1 + doctor.CHANCE_MARGIN - 0.001
    assert "stuck_at_chance" in codes(history)


def test_double_softmax_is_about_the_pairing_only():
    assert codes(HEALTHY, kind="probs", loss="cross_entropy") == ["double_softmax"]
    assert codes(HEALTHY, kind="log_probs", loss="nll") == []
    assert codes(HEALTHY, kind="probs", loss="mse") == []
    assert codes(HEALTHY, kind=None, loss=None) == []


def overfit_history(final_val_loss):
    return rows(
        train_loss=[0.40, 0.20, 0.10, 0.05, 0.02, 0.01],
        train_acc=[0.88, 0.94, 0.97, 0.99, 0.995, 1.0],
        val_acc=[0.86, 0.89, 0.90, 0.899, 0.898, 0.897],
        val_loss=[0.40, 0.33, 0.30, 0.31, 0.33, final_val_loss],
    )


def test_overfitting():
    found = codes(overfit_history(0.40))
    assert "overfitting" in found
    msg = next(f["message"] for f in diagnose(overfit_history(0.40), {}, 10, "logits", "cross_entropy")
               if f["code"] == "overfitting")
    assert "10.3 %" in msg  # train 1.0 vs val 0.897


def test_overfitting_needs_the_validation_loss_to_rise():
    # Same accuracy gap, but the validation loss only creeps up less than OVERFIT_VAL_LOSS_RISE.
    barely = 0.30 * (1 + doctor.OVERFIT_VAL_LOSS_RISE) - 0.001
    assert "overfitting" not in codes(overfit_history(barely))


def test_under_trained():
    history = rows([1.0, 0.7, 0.5, 0.4], [0.60, 0.70, 0.78, 0.84])
    found = codes(history)
    assert "under_trained" in found and "late_best" not in found


def test_late_best_when_the_last_evaluation_is_best_but_flat():
    gain = doctor.UNDER_TRAINED_MIN_GAIN / 2
    history = rows([0.5, 0.2, 0.1, 0.08, 0.07], [0.90, 0.95, 0.979, 0.979 + gain / 2, 0.979 + gain])
    assert codes(history) == ["late_best"]


def test_early_best_reports_the_time_early_stopping_would_save():
    # Best at epoch 2 of 10; stopping after PATIENCE more evaluations ends at epoch 4: 60 % saved.
    history = rows(
        train_loss=[0.5, 0.3, 0.25, 0.22, 0.2, 0.19, 0.18, 0.17, 0.16, 0.15],
        val_acc=[0.90, 0.95, 0.94, 0.945, 0.94, 0.943, 0.941, 0.944, 0.942, 0.943],
        val_loss=[0.3, 0.2, 0.21, 0.2, 0.21, 0.205, 0.21, 0.205, 0.21, 0.207],
    )
    assert doctor.EARLY_STOP_PATIENCE == 2
    findings = diagnose(history, {}, 10, "logits", "cross_entropy")
    assert [f["code"] for f in findings] == ["early_best"]
    assert "60 %" in findings[0]["message"]


def test_early_best_not_raised_for_a_best_near_the_end():
    history = [dict(r) for r in HEALTHY]
    history[7]["val_accuracy"] = 0.99  # best at epoch 8 of 10: stopping would save nothing
    assert "early_best" not in codes(history)


def test_lr_too_high():
    history = rows([1.0, 1.4, 1.9, 1.2, 0.9], [0.60, 0.55, 0.50, 0.62, 0.70])
    assert "lr_too_high" in codes(history)


def test_lr_too_high_tolerates_noise_below_the_threshold():
    first = 1.0
    history = rows([first, first * (1 + doctor.LR_HIGH_RISE - 0.01), 0.8, 0.6], [0.6, 0.62, 0.7, 0.75])
    assert "lr_too_high" not in codes(history)


def test_lr_too_low():
    history = rows([2.30, 2.29, 2.285, 2.28], [0.20, 0.22, 0.21, 0.21], train_acc=[0.2, 0.21, 0.21, 0.22])
    assert codes(history) == ["lr_too_low"]


def test_lr_too_low_not_raised_for_a_converged_model():
    # A flat loss on a model that already fits its training data is convergence, not a small lr.
    history = rows([0.020, 0.0199, 0.0198, 0.0197], [0.98, 0.981, 0.982, 0.981], train_acc=[0.995] * 4)
    assert "lr_too_low" not in codes(history)


def test_empty_history_is_not_an_error():
    assert diagnose([], {}, 10, None, None) == []


def test_diagnose_run_reads_a_run_folder(tmp_path):
    from cnnlab import runs

    for r in rows([2.30, 2.29, 2.285, 2.28], [0.20, 0.22, 0.21, 0.21], train_acc=[0.2, 0.21, 0.21, 0.22]):
        runs.append_jsonl(tmp_path / "metrics.jsonl", r)
    runs.write_json(tmp_path / "summary.json", {"status": "completed", "classes": [str(i) for i in range(10)],
                                                "config": {"model": {"softmax_output": True},
                                                           "loss": {"name": "cross_entropy"}}})
    assert sorted(f["code"] for f in doctor.diagnose_run(tmp_path)) == ["double_softmax", "lr_too_low"]


def test_a_loss_that_ends_far_above_where_it_started_is_an_error_whatever_the_status():
    # issue 23: a bf16 airbench run ended "completed" at train loss 17.4, every value finite
    history = rows([2.2, 3.5, 9.0, 17.4], [0.3, 0.2, 0.12, 0.11], train_acc=[0.3, 0.2, 0.1, 0.1])
    found = diagnose(history, {"status": "completed", "precision": {"used": "bf16"}}, 10, "logits", "cross_entropy")
    assert found[0]["code"] == "loss_rose" and found[0]["severity"] == "error"
    assert "17.4" in found[0]["message"] and "train.precision=fp32" in found[0]["message"]
    assert "lr_too_high" not in codes(history)  # the same rise is told once
    fp32 = diagnose(history, {"status": "completed", "precision": {"used": "fp32"}}, 10, "logits", "cross_entropy")
    assert fp32[0]["code"] == "loss_rose" and "precision" not in fp32[0]["message"]


def test_one_evaluation_is_measured_against_the_uniform_guess():
    # ln 10 = 2.30: a single evaluation at loss 5 is worse than predicting every class equally likely
    assert codes(rows([5.0], [0.1]))[0] == "loss_rose"
    assert "loss_rose" not in codes(rows([2.0], [0.4]))


def test_a_loss_just_under_twice_its_start_is_not_loss_rose():
    start = 0.5  # below ln 10, so the first evaluation is the reference
    history = rows([start, 0.7, start * doctor.LOSS_ROSE_FACTOR * 0.99], [0.8, 0.8, 0.8])
    assert "loss_rose" not in codes(history)
    assert "loss_rose" in codes(rows([start, 0.7, start * doctor.LOSS_ROSE_FACTOR], [0.8, 0.8, 0.8]))


# ----------------------------------------------------------------------------- the run's own settings (issue 25, 7)

EARLY_BEST_HISTORY = dict(
    train_loss=[0.5, 0.3, 0.25, 0.22, 0.2, 0.19, 0.18, 0.17, 0.16, 0.15],
    val_acc=[0.90, 0.95, 0.94, 0.945, 0.94, 0.943, 0.941, 0.944, 0.942, 0.943],
    val_loss=[0.3, 0.2, 0.21, 0.2, 0.21, 0.205, 0.21, 0.205, 0.21, 0.207],
)


def test_an_early_stopped_run_is_not_told_early_stopping_would_have_saved_time():
    # The run: early_stopped, patience 2 on val_loss, and still told "early stopping with a patience of 2".
    summary = {"status": "early_stopped",
               "config": {"train": {"monitor": "val_loss", "early_stopping": {"patience": 2}}}}
    findings = diagnose(rows(**EARLY_BEST_HISTORY), summary, 10, "logits", "cross_entropy")
    assert not [f for f in findings if "early stopping" in f["message"]], findings


def test_a_run_with_patience_set_is_not_told_to_set_it():
    summary = {"status": "completed", "config": {"train": {"early_stopping": {"patience": 5}}}}
    assert "early_best" not in codes(rows(**EARLY_BEST_HISTORY), summary=summary)
    # the same history without patience is still told
    assert "early_best" in codes(rows(**EARLY_BEST_HISTORY), summary={"status": "completed", "config": {}})


def test_the_best_is_the_monitored_metrics():
    # best val_loss at the last evaluation: with monitor val_loss best.pt is the last one, so nothing "early"
    history = rows(**EARLY_BEST_HISTORY)
    history[-1]["val_loss"] = 0.1
    summary = {"status": "completed", "config": {"train": {"monitor": "val_loss"}}}
    found = diagnose(history, summary, 10, "logits", "cross_entropy")
    assert "early_best" not in [f["code"] for f in found]
    assert any("validation loss" in f["message"] for f in found if f["code"] == "late_best")


UNDER_TRAINED = rows([1.0, 0.7, 0.5, 0.4], [0.60, 0.70, 0.78, 0.84])


@pytest.mark.parametrize("sched", ["cosine", "onecycle"])
def test_more_epochs_under_a_whole_run_schedule_names_a_new_run_not_a_resume(tmp_path, sched):
    summary = {"status": "completed", "config": {"sched": {"name": sched}, "train": {"epochs": 4}}}
    msg = next(f["message"] for f in diagnose(UNDER_TRAINED, summary, 10, "logits", "cross_entropy", tmp_path / "r")
               if f["code"] == "under_trained")
    assert "--resume" not in msg.replace("--resume cannot", "")
    assert f"cnnlab train {tmp_path / 'r' / 'config.yaml'} train.epochs=8 --out" in msg


def test_more_epochs_under_a_stepwise_schedule_names_the_resume(tmp_path):
    summary = {"status": "completed", "config": {"sched": {"name": "step"}, "train": {"epochs": 4}}}
    msg = next(f["message"] for f in diagnose(UNDER_TRAINED, summary, 10, "logits", "cross_entropy", tmp_path / "r")
               if f["code"] == "under_trained")
    assert f"cnnlab train --resume {tmp_path / 'r'} train.epochs=8" in msg


@pytest.mark.parametrize("sched", ["cosine", "none"])
def test_the_command_the_doctor_names_runs(tmp_path, data_root, sched, capsys):
    # The command in "more epochs would help" must be one cnnlab accepts for this run (a resume with more
    # epochs is refused under cosine), so it is run here on a real tiny run.
    import shlex

    import cnnlab
    from cnnlab import cli
    from cnnlab.reporting import results

    from conftest import tiny_overrides

    run = cnnlab.train({"name": "more"}, tiny_overrides(**{"sched.name": sched, "data.train_limit": 300}),
                       out=tmp_path / "run", report=False)
    command = doctor._more_epochs_command(run.summary, run.dir).split("cnnlab ", 1)[1]
    args = shlex.split(command)
    assert cli.main(args) == 0, capsys.readouterr()
    out = run.dir if "--resume" in args else Path(args[args.index("--out") + 1])
    summary = runs.read_summary(out)
    assert summary["config"]["train"]["epochs"] == 2 and summary["status"] == "completed"
