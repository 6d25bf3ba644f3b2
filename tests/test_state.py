"""The training state and its saved form (cnnlab.training.state): every piece of state is declared saved or rebuilt,
the files a run writes are the declared form, and checkpoints of the format before keep resuming."""
from dataclasses import fields

import pytest
import torch

from cnnlab import runs
from cnnlab.training import loop as train
from cnnlab.training.state import CHECKPOINT_FORMAT, REBUILT, SAVED, Checkpoint, TrainState


def test_every_field_of_the_training_state_is_saved_or_declared_rebuilt():
    names = {f.name for f in fields(TrainState)}
    undeclared = names - SAVED.keys() - REBUILT
    assert not undeclared, f"TrainState fields neither saved (state.SAVED) nor rebuilt (state.REBUILT): {undeclared}"
    assert not SAVED.keys() & REBUILT, "a field cannot be both saved and rebuilt"
    assert not (SAVED.keys() | REBUILT) - names, "declared fields TrainState no longer has"
    entries = {f.name for f in fields(Checkpoint)} - {"format"}
    assert set(SAVED.values()) == entries  # each checkpoint entry carries a field, each saved field has one


def test_a_run_writes_the_declared_checkpoint_and_reads_it_back(tmp_path, tiny_config, data_root):
    cfg = tiny_config(**{"train.ema": 0.9, "train.precision": "fp16"})  # EMA and loss scaler: optional entries
    train.run(cfg, tmp_path / "r", log=lambda *_: None)
    raw = runs.load_checkpoint(tmp_path / "r" / "last.pt")
    assert set(raw) == {f.name for f in fields(Checkpoint)} | {"step"}
    assert raw["format"] == CHECKPOINT_FORMAT and raw["step"] == raw["progress"]["step"] == 10
    ck = Checkpoint.load(tmp_path / "r" / "last.pt")
    assert ck.ema and ck.scaler["scale"] > 0 and ck.config["train"]["ema"] == 0.9
    assert all(torch.equal(ck.model[k], raw["model"][k]) for k in raw["model"])


def test_a_checkpoint_of_the_format_before_resumes(tmp_path, tiny_config, data_root):
    # format 1 (cnnlab before the format had a number) wrote no "format" and no "scaler": take both out of a
    # real run's files and resume it for another epoch
    train.run(tiny_config(), tmp_path / "r", log=lambda *_: None)
    for name in ("last.pt", "best.pt"):
        state = runs.load_checkpoint(tmp_path / "r" / name)
        del state["format"], state["scaler"]
        runs.save_checkpoint(tmp_path / "r" / name, state)
    assert Checkpoint.load(tmp_path / "r" / "last.pt").format == 1
    summary = train.run(tiny_config(**{"train.epochs": 2}), tmp_path / "r", resume=True, log=lambda *_: None)
    assert summary["status"] == "completed" and runs.load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 20
    assert runs.load_checkpoint(tmp_path / "r" / "last.pt")["format"] == CHECKPOINT_FORMAT


@pytest.mark.parametrize("state,words", [
    ([1, 2], "holds a list"),
    ({"model": {}}, "it has no optimizer, scheduler, progress, rng, config"),
    ({k: {} for k in Checkpoint.REQUIRED} | {"format": CHECKPOINT_FORMAT + 1}, "newer than this cnnlab reads"),
])
def test_what_is_not_a_checkpoint_of_this_format_is_refused_by_name(tmp_path, state, words):
    from cnnlab.runs import CheckpointError

    with pytest.raises(CheckpointError, match=words) as e:
        Checkpoint.from_dict(state, tmp_path / "last.pt")
    assert str(tmp_path / "last.pt") in str(e.value)
