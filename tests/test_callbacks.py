"""Callbacks through the public API (``cnnlab.train(..., callbacks=[...])``) and resuming from a chosen
checkpoint (``cnnlab train --resume RUN --from best|last|PATH``, ``resume_from=``), on real MNIST runs
(issue 27, item 8)."""
from __future__ import annotations

import shutil

import pytest
import torch

import cnnlab
from cnnlab import runs
from cnnlab.config.schema import ConfigError
from conftest import cnnlab_here, tiny_overrides

# 10 steps an epoch, a curve point every 2 steps: 5 evaluation points. min_delta 0.9: only the first point
# improves on "no best yet", so best.pt is the step-2 checkpoint and every later one is only last.pt.
TINY = tiny_overrides(**{"train.eval_every": 2, "train.early_stopping.min_delta": 0.9,
                         "data.augment.crop_padding": 2, "data.augment.mixup": 0.2})


class StopAfter:
    """Stops the run at its ``n``-th evaluation point with ``answer``; records what it was told."""

    def __init__(self, n: int, answer=True):
        self.n, self.answer, self.rows, self.summary, self.closed = n, answer, [], None, False

    def on_eval(self, row):
        self.rows.append(row)
        return self.answer if len(self.rows) == self.n else None

    def on_finish(self, summary):
        self.summary = summary

    def close(self):
        self.closed = True


def test_a_callback_stops_the_run_after_its_second_evaluation(tmp_path, data_root):
    cb = StopAfter(2)
    only_eval = type("OnlyEval", (), {"seen": 0, "on_eval": lambda self, row: setattr(self, "seen", self.seen + 1)})()
    run = cnnlab.train({}, TINY, tmp_path / "run", callbacks=[cb, only_eval], report=False)
    assert run.status == "early_stopped"
    assert "StopAfter" in run.summary["error"] and "at step 4" in run.summary["error"]
    assert [r["step"] for r in cb.rows] == [2, 4] and [r["step"] for r in run.metrics] == [2, 4]
    assert only_eval.seen == 2  # told of the same points; its missing on_finish / close are no-ops
    assert cb.summary["status"] == "early_stopped" and cb.closed
    assert run.summary["test"]["accuracy"] > 0  # finished and scored, as early stopping leaves a run


def test_a_callback_can_pause_the_run_and_a_resume_goes_on(tmp_path, data_root):
    run = cnnlab.train({}, TINY, tmp_path / "run", callbacks=[StopAfter(3, "interrupted")], report=False)
    assert run.status == "interrupted" and runs.load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 6
    done = cnnlab.train(None, None, tmp_path / "run", resume=True, report=False)
    assert done.status == "completed" and [r["step"] for r in done.metrics] == [2, 4, 6, 8, 10]


@pytest.mark.parametrize("callbacks, words", [
    ("not a list", "callbacks: expected a list"),
    ([object()], "has none of the methods"),
])
def test_wrong_callbacks_are_named_before_any_work(tmp_path, callbacks, words):
    with pytest.raises(ConfigError, match=words):
        cnnlab.train({}, TINY, tmp_path / "run", callbacks=callbacks)
    assert not (tmp_path / "run").exists()


def test_a_callback_answering_nonsense_fails_the_run_naming_it(tmp_path, data_root):
    with pytest.raises(ValueError, match="callback StopAfter: on_eval returned 'stop'"):
        cnnlab.train({}, TINY, tmp_path / "run", callbacks=[StopAfter(1, "stop")], report=False)
    assert runs.read_summary(tmp_path / "run")["status"] == "failed"


def _weights(path):
    return runs.load_checkpoint(path)["model"]


def test_resume_from_best_continues_from_bests_step(tmp_path, data_root):
    full = cnnlab.train({}, TINY, tmp_path / "full", report=False)  # uninterrupted, for comparison
    assert full.summary["best"]["step"] == 2

    cnnlab.train({}, TINY, tmp_path / "part", callbacks=[StopAfter(4, "interrupted")], report=False)
    part = tmp_path / "part"
    assert runs.load_checkpoint(part / "best.pt")["step"] == 2 and runs.load_checkpoint(part / "last.pt")["step"] == 8
    shutil.copy(part / "best.pt", tmp_path / "chosen.pt")

    assert cnnlab_here("train", "--resume", part, "--from", "best") == 0
    summary = runs.read_summary(part)
    assert summary["status"] == "completed"
    assert summary["resumed"] == [{"step": 2, "changes": {}, "from": str(part / "best.pt")}]
    assert [r["step"] for r in runs.read_metrics(part)] == [2, 4, 6, 8, 10]  # the points after best re-run
    # from best's step with best's generator states: the same steps as the uninterrupted run, bit for bit
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(part / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert summary["test"] == full.summary["test"]

    # a checkpoint file by its path (here the step-2 copy): the finished run goes back to step 2 and on again
    assert cnnlab_here("train", "--resume", part, "--from", tmp_path / "chosen.pt") == 0
    summary = runs.read_summary(part)
    assert summary["resumed"][-1] == {"step": 2, "changes": {}, "from": str(tmp_path / "chosen.pt")}
    assert summary["test"] == full.summary["test"]


def test_resume_from_last_is_the_default(tmp_path, data_root):
    cnnlab.train({}, TINY, tmp_path / "run", callbacks=[StopAfter(2, "interrupted")], report=False)
    done = cnnlab.train(None, None, tmp_path / "run", resume=True, resume_from="last", report=False)
    assert done.status == "completed" and done.summary["resumed"] == []


def test_bad_from_exits_2_naming_it(tmp_path, data_root, capsys):
    cnnlab.train({}, TINY, tmp_path / "run", callbacks=[StopAfter(1, "interrupted")], report=False)
    capsys.readouterr()
    assert cnnlab_here("train", "--resume", tmp_path / "run", "--from", tmp_path / "nothing.pt") == 2
    assert "--from" in capsys.readouterr().err
    assert cnnlab_here("train", "recipes/quickstart_lenet5_mnist.yaml", "--from", "best") == 2
    assert "use it with --resume" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="resume_from"):
        cnnlab.train(None, None, tmp_path / "run", resume=True, resume_from=tmp_path / "nothing.pt")
