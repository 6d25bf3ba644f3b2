"""One sweep run as plain data: a searched setting is the same run as a planned one, and execute_task
tells its trackers each evaluation point, lets them prune the run, and records its row only when asked."""
import json

import numpy as np

from cnnlab.sweeps.plan import plan_sweep
from cnnlab.sweeps.task import execute_task, task_from_settings

FAST = {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500}, "model": {"name": "linear"},
        "optim": {"name": "adam", "lr": 0.01},
        "train": {"epochs": 2, "batch_size": 100, "progress": False, "threads": 1}}


def test_a_searched_setting_is_the_same_run_as_a_planned_one():
    planned = plan_sweep({"base": FAST, "axes": {"optim.lr": [0.003]}, "seeds": [4]}).runs[0]
    # the study mapping as the sweep holds it (named after the sweep), the value as a searcher hands it
    task = task_from_settings({**FAST, "name": "sweep"}, {"optim.lr": np.float64(0.003)}, 4, "/elsewhere")
    assert task["run_id"] == planned.run_id and task["run_dir"] == planned.run_dir
    assert type(task["settings"]["optim.lr"]) is float and json.dumps(task["settings"])
    assert task["config"]["train"]["progress"] is False and task["out_dir"] == "/elsewhere"
    assert not task["resume"] and not task["force"]


class PruneAtFirst:
    def __init__(self):
        self.rows, self.finished, self.closed = [], None, False

    def on_eval(self, row):
        self.rows.append(row)
        return "pruned"

    def on_finish(self, summary):
        self.finished = summary

    def close(self):
        self.closed = True


def test_a_tracker_prunes_the_run_and_the_row_is_only_returned(tmp_path, data_root):
    task = task_from_settings(FAST, {}, 0, str(tmp_path))
    tracker = PruneAtFirst()
    row = execute_task(task, trackers=(tracker,), record=False)
    assert row["status"] == "pruned" and row["test"]["accuracy"] > 0.5  # its best weights were scored
    assert [r["epoch"] for r in tracker.rows] == [1.0]  # stopped at the first of two epochs
    assert tracker.finished["status"] == "pruned" and tracker.closed
    run = tmp_path / task["run_dir"]
    assert json.loads((run / "summary.json").read_text())["status"] == "pruned" and (run / "best.pt").exists()
    assert not (tmp_path / "results.jsonl").exists()  # record=False: the caller writes the row
