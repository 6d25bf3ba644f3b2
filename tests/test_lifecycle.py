"""The one after-run path (cnnlab.lifecycle) taken alike by `cnnlab train`, the API's cnnlab.training.loop and a
sweep's run: a run that fails while training still gets its findings, curves and report; a folder refused
before training is left exactly as it was."""
import json

import pytest
import yaml

import cnnlab
from cnnlab import cli
from cnnlab.training import loop as train
from cnnlab.config.schema import ConfigError
from cnnlab.sweeps.task import execute_task, task_from_settings

TINY = {"name": "tiny", "data": {"name": "mnist", "train_limit": 1000, "val_size": 500},
        "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 2, "batch_size": 100, "progress": False, "precision": "fp32"}}


@pytest.fixture
def fails_at_second_evaluation(monkeypatch):
    """A crash inside the training loop, after one learning-curve point was written."""
    real, calls = train.evaluation_point, []

    def crashing(s):
        calls.append(s.progress.step)
        if len(calls) == 2:
            raise RuntimeError("boom in the loop")
        return real(s)

    monkeypatch.setattr(train, "evaluation_point", crashing)


def call(caller, tmp_path, folder):
    """Train TINY into tmp_path/folder through ``caller``; the error it raised (None for an exit code)."""
    out = tmp_path / folder
    if caller == "cli":
        study = tmp_path / "study.yaml"
        study.write_text(yaml.safe_dump(TINY))
        try:
            return cli.main(["train", str(study), "--out", str(out)])
        except RuntimeError as e:  # a crash is raised (a traceback, exit code 1); bad input returns 2
            return e
    if caller == "api":
        with pytest.raises(Exception) as e:
            cnnlab.train(TINY, out=out)
        return e.value
    task = task_from_settings(TINY, {}, 0, str(tmp_path))
    row = execute_task(task, record=False)
    (tmp_path / task["run_dir"]).rename(out)
    return row


@pytest.mark.parametrize("caller", ["cli", "api", "sweep"])
def test_a_run_that_fails_while_training_is_finished_all_the_same(tmp_path, data_root, caller,
                                                                   fails_at_second_evaluation):
    got = call(caller, tmp_path, "r")
    if caller in ("cli", "api"):
        assert "boom in the loop" in str(got)
    else:
        assert got["status"] == "failed" and "boom in the loop" in got["error"]
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom in the loop" in summary["error"]
    assert "findings" in summary  # the doctor ran
    assert (tmp_path / "r" / "curves.png").is_file()
    assert (tmp_path / "r" / "report.html").is_file() == (caller != "sweep")  # a sweep builds reports later


@pytest.mark.parametrize("caller", ["cli", "api"])
def test_a_folder_refused_before_training_is_left_as_it_was(tmp_path, data_root, caller):
    cnnlab.train(TINY, out=tmp_path / "r", report=False)
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    got = call(caller, tmp_path, "r")  # the run exists: refused (no --force)
    if caller == "cli":
        assert got == 2
    else:
        assert isinstance(got, ConfigError) and "already holds a finished run" in str(got)
    after = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    assert after == before  # not finished (no findings, no curves.png added), nothing rewritten
