"""cnnlab.training.resuming: which differences between a checkpoint's config and a resume's are allowed."""
import pytest

from cnnlab import runs
from cnnlab.training import resuming
from cnnlab.config.schema import ConfigError, validate

SWEEP_RUN = {"name": "lr_sweep", "run_id": "0123456789", "settings": {"optim.lr": 0.01}}


def checkpoint(folder, raw: dict):
    folder.mkdir(parents=True, exist_ok=True)
    runs.save_checkpoint(folder / "last.pt", {"config": validate(raw).to_dict(), "step": 0})
    return folder


def test_where_a_run_is_tracked_and_which_sweep_it_is_in_may_change(tmp_path):
    run = checkpoint(tmp_path / "r", {"train": {"sweep": SWEEP_RUN}})
    renamed = {**SWEEP_RUN, "name": "lr_sweep_v2"}
    changes = resuming.check(validate({"train": {"sweep": renamed, "mlflow": "file:./mlruns"}}), run)
    assert changes == {"train.mlflow": [None, "file:./mlruns"], "train.sweep.name": ["lr_sweep", "lr_sweep_v2"]}


def test_what_a_step_does_may_not_change_beside_them(tmp_path):
    run = checkpoint(tmp_path / "r", {"train": {"sweep": SWEEP_RUN}})
    with pytest.raises(ConfigError, match=r"optim\.lr: 0\.001 in the checkpoint, 0\.01 now"):
        resuming.check(validate({"optim": {"lr": 0.01}, "train": {"sweep": SWEEP_RUN, "mlflow": "file:./m"}}), run)
