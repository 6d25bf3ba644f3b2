import json
import os
import pickle

import pytest
import torch

from cnnlab import runs


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "summary.json"
    runs.write_json(p, {"a": 1, "loss": float("nan")})
    assert json.loads(p.read_text()) == {"a": 1, "loss": None}
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]


def test_one_rule_for_non_finite_numbers_everywhere(tmp_path):
    """NaN, +inf and -inf become null in every writer: strict JSON any reader parses."""
    row = {"loss": float("nan"), "x": [float("inf"), -float("inf"), 1.5], "n": {"y": float("nan")}}
    expect = {"loss": None, "x": [None, None, 1.5], "n": {"y": None}}
    runs.write_json(tmp_path / "a.json", row)
    runs.append_jsonl(tmp_path / "b.jsonl", row)
    runs.write_jsonl(tmp_path / "c.jsonl", [row, row])
    for name in ("a.json", "b.jsonl", "c.jsonl"):
        text = (tmp_path / name).read_text()
        assert "NaN" not in text and "Infinity" not in text and '"nan"' not in text
    assert json.loads((tmp_path / "a.json").read_text()) == expect
    assert runs.read_jsonl(tmp_path / "b.jsonl") == [expect]
    assert runs.read_jsonl(tmp_path / "c.jsonl") == [expect, expect]


def test_write_bytes_is_atomic_and_readable_by_others(tmp_path):
    p = tmp_path / "curves.png"
    runs.write_bytes(p, b"\x89PNG")
    assert p.read_bytes() == b"\x89PNG" and [f.name for f in tmp_path.iterdir()] == ["curves.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~umask


def test_append_jsonl_takes_an_exclusive_lock(tmp_path, monkeypatch):
    fcntl = pytest.importorskip("fcntl")
    calls = []
    real = fcntl.flock
    monkeypatch.setattr(fcntl, "flock", lambda fd, op: (calls.append(op), real(fd, op)))
    runs.append_jsonl(tmp_path / "r.jsonl", {"a": 1})
    assert calls == [fcntl.LOCK_EX]


def test_failed_write_keeps_the_old_file(tmp_path):
    p = tmp_path / "summary.json"
    runs.write_json(p, {"version": 1})

    class Boom:
        pass

    with pytest.raises(TypeError):
        runs.write_json(p, {"bad": Boom()})
    assert json.loads(p.read_text()) == {"version": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_read_jsonl_ignores_a_torn_last_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    runs.append_jsonl(p, {"step": 1})
    runs.append_jsonl(p, {"step": 2})
    with open(p, "a") as f:
        f.write('{"step": 3, "val_')  # a kill in the middle of a write
    assert [r["step"] for r in runs.read_jsonl(p)] == [1, 2]


def test_checkpoint_round_trip(tmp_path):
    state = {"model": {"w": torch.arange(4.0)}, "step": 7, "rng": torch.get_rng_state()}
    runs.save_checkpoint(tmp_path / "last.pt", state)
    back = runs.load_checkpoint(tmp_path / "last.pt")
    assert back["step"] == 7 and torch.equal(back["model"]["w"], state["model"]["w"])


def test_truncated_checkpoint_is_refused(tmp_path):
    p = tmp_path / "last.pt"
    runs.save_checkpoint(p, {"model": {"w": torch.randn(1000)}})
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(runs.CheckpointError, match="cannot load checkpoint"):
        runs.load_checkpoint(p)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.pt"
    torch.save({"model": _Payload(marker)}, p, pickle_module=pickle)
    with pytest.raises(runs.CheckpointError):
        runs.load_checkpoint(p)
    assert not marker.exists()


def test_environment_records_versions():
    env = runs.environment("cpu")
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["python"]


def test_a_run_killed_before_its_first_checkpoint_restarts_and_drops_its_mlflow_link(tmp_path):
    # mlflow.json is written as the run starts (cnnlab.training.tracking): it must not make the folder look finished work
    for name in ("config.yaml", "metrics.jsonl", "mlflow.json"):
        (tmp_path / name).write_text("{}")
    assert runs.prepare_out_dir(tmp_path, resume=False, force=False) is False
    assert not (tmp_path / "mlflow.json").exists()  # the new run gets a new MLflow run, not the killed one's
