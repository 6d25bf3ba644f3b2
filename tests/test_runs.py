import json
import os
import pickle

import pytest
import torch

from cnnlab import runs


def test_write_json_is_atomic_and_leaves_no_temp(tmp_path):
    p = tmp_path / "summary.json"
    runs.write_json(p, {"a": 1, "loss": float("nan")})
    assert json.loads(p.read_text()) == {"a": 1, "loss": "nan"}
    assert [f.name for f in tmp_path.iterdir()] == ["summary.json"]


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
