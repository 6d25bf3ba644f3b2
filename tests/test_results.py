"""cnnlab.reporting.results: statuses, the results row, forgiving readers, the one chance-level rule."""
import json
import math

import pytest

from cnnlab import runs
from cnnlab.reporting import results
from cnnlab.runs import Status


def test_statuses_are_plain_strings_in_json():
    assert Status.EARLY_STOPPED == "early_stopped"
    assert json.dumps({"status": Status.DIVERGED}) == '{"status": "diverged"}'
    assert f"{Status.FAILED}" == "failed"
    assert set(runs.FINAL_STATUSES) == {"completed", "early_stopped", "diverged", "pruned"}
    assert not runs.succeeded("pruned")  # a pruned run is finished but left out of the statistics
    assert runs.succeeded("completed") and runs.succeeded("early_stopped") and not runs.succeeded("diverged")


def test_row_from_summary_keeps_finite_numbers_only():
    run = {"run_id": "abc", "settings": {"optim.lr": 0.1}, "seed": 0, "run_dir": "runs/abc"}
    summary = {"status": "diverged", "test": {"accuracy": 0.1, "loss": "nan", "f1_macro": float("inf")},
               "best": {"val_accuracy": 0.2, "epoch": 1}, "final_train_loss": None, "time": {"total_s": 3.5},
               "error": "loss became non-finite"}
    row = results.row_from_summary(run, summary)
    assert row["test"] == {"accuracy": 0.1, "loss": None, "f1_macro": None}
    assert row["status"] == "diverged" and row["time_s"] == 3.5 and row["error"] == "loss became non-finite"
    assert results.row_from_summary(run, {}, error="boom", time_s=1.23456)["status"] == "failed"


def test_load_results_keeps_the_last_row_per_run_and_skips_a_torn_line(tmp_path):
    path = tmp_path / results.RESULTS
    row = {"settings": {}, "seed": 0}  # the fields every row has (results.row_problem)
    results.append_row(path, {**row, "run_id": "a", "status": "failed"})
    results.append_row(path, {**row, "run_id": "b", "status": "completed"})
    results.append_row(path, {**row, "run_id": "a", "status": "completed", "test": {"loss": math.nan}})
    with open(path, "a") as f:
        f.write('{"run_id": "c", "sta')
    rows = results.load_results(tmp_path)
    assert [(r["run_id"], r["status"]) for r in rows] == [("a", "completed"), ("b", "completed")]
    assert rows[0]["test"]["loss"] is None
    assert results.load_plan(tmp_path) is None


def test_read_summary_is_none_for_missing_torn_or_odd_files(tmp_path):
    assert runs.read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"status": "comp')
    assert runs.read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert runs.read_summary(tmp_path) is None
    runs.write_json(tmp_path / "summary.json", {"status": "early_stopped", "classes": ["a", "b"]})
    assert runs.is_finished(tmp_path)
    assert results.num_classes(tmp_path.parent, [{"run_dir": tmp_path.name}]) == 2
    runs.write_json(tmp_path / "summary.json", {"status": "interrupted"})
    assert not runs.is_finished(tmp_path)


@pytest.mark.parametrize("accuracy, classes, expected", [
    (0.1135, 10, True), (0.10 + results.CHANCE_MARGIN, 10, True), (0.16, 10, False), (0.98, 10, False),
    (0.51, 2, True), (0.10, 2, False),  # far below chance is not "at chance"
    (None, 10, False), (math.nan, 10, False), (0.5, 1, False),
])
def test_one_chance_rule(accuracy, classes, expected):
    assert results.at_chance(accuracy, classes) is expected


def test_compare_and_doctor_share_the_chance_rule():
    from cnnlab.reporting import compare
    from cnnlab.reporting import doctor

    assert doctor.CHANCE_MARGIN == compare.CHANCE_MARGIN == results.CHANCE_MARGIN


@pytest.mark.parametrize("value, expected", [(1, 1.0), (0.5, 0.5), ("nan", None), (math.inf, None),
                                             (None, None), (True, None), ("x", None)])
def test_number(value, expected):
    assert results.number(value) == expected
