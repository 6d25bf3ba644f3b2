"""cnnlab.tracking: trackers see every evaluation point and the summary, may stop a run, and are closed."""
import json

from cnnlab import train, tracking


class Recorder:
    def __init__(self, stop_at_eval=None):
        self.rows, self.summary, self.closed, self.stop_at_eval = [], None, False, stop_at_eval

    def on_eval(self, row):
        self.rows.append(row)
        return "pruned" if self.stop_at_eval and len(self.rows) >= self.stop_at_eval else None

    def on_finish(self, summary):
        self.summary = summary

    def close(self):
        self.closed = True


def test_a_tracker_sees_every_point_and_the_summary(tmp_path, tiny_config):
    rec = Recorder()
    summary = train.run(tiny_config(**{"train.eval_every": 5}), tmp_path / "r", log=lambda *_: None, trackers=[rec])
    curve = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rec.rows] == [r["step"] for r in curve] and len(curve) >= 2
    assert rec.summary["status"] == summary["status"] == "completed" and rec.closed


def test_a_tracker_can_stop_the_run_as_pruned_keeping_its_best_checkpoint(tmp_path, tiny_config):
    rec = Recorder(stop_at_eval=1)
    summary = train.run(tiny_config(**{"train.eval_every": 5}), tmp_path / "r", log=lambda *_: None, trackers=[rec])
    assert summary["status"] == "pruned" and len(rec.rows) == 1 and rec.closed
    assert (tmp_path / "r" / "best.pt").exists() and summary["time"]["steps"] == 5
    assert summary["test"]["accuracy"] is not None  # the best weights so far are scored


def test_the_config_asks_for_tensorboard_only_when_set(tmp_path, tiny_config):
    assert tracking.trackers_for(tiny_config(), tmp_path) == []
    (board,) = tracking.trackers_for(tiny_config(**{"train.tensorboard": True}), tmp_path)
    board.on_eval({"step": 1, "train_loss": 0.5, "val_accuracy": float("nan")})
    board.close()
    assert any((tmp_path / "tensorboard").iterdir())
