import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab import runs
from cnnlab.inference import predict
from cnnlab.training import loop as train
from cnnlab.reporting.html import finish_run
from cnnlab.config.schema import ConfigError
from cnnlab.training.state import Checkpoint, Progress
from conftest import PRECISIONS


def quiet(*_):
    pass


def test_tiny_run_leaves_a_complete_folder(tmp_path, tiny_config, data_root):
    out = tmp_path / "run"
    summary = train.run(tiny_config(**{"train.eval_every": 5}), out, log=quiet)
    finish_run(out, log=quiet)
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "best.pt", "last.pt", "curves.png", "misclassified.pt"):
        assert (out / name).exists(), name
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["status"] == summary["status"] == "completed"
    for split in ("train", "val", "test"):
        s = on_disk[split]
        assert 0.5 < s["accuracy"] <= 1 and len(s["per_class"]["f1"]) == 10 and len(s["confusion"]) == 10
        assert sum(map(sum, s["confusion"])) == {"train": 1000, "val": 500, "test": 10000}[split]
    assert on_disk["model"]["params_total"] == 61706
    assert on_disk["env"]["torch"] == torch.__version__ and on_disk["time"]["train_images_per_s"] > 0
    rows = runs.read_jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [5, 10]
    assert set(rows[0]) >= {"step", "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "elapsed_s"}
    best = runs.load_checkpoint(out / "best.pt")
    assert best["step"] == on_disk["best"]["step"]


def test_same_seed_same_result(tmp_path, tiny_config, data_root, precision):
    cfg = tiny_config(**{"data.augment.flip": True, "data.augment.crop_padding": 2, "model.dropout": 0.2,
                         "model.activation": "relu", "train.precision": precision})
    a = train.run(cfg, tmp_path / "a", log=lambda *_: None)
    b = train.run(cfg, tmp_path / "b", log=lambda *_: None)
    assert a["test"]["accuracy"] == b["test"]["accuracy"] and a["test"]["loss"] == b["test"]["loss"]
    wa, wb = (runs.load_checkpoint(tmp_path / d / "last.pt")["model"] for d in "ab")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_divergence_is_recorded(tmp_path, tiny_config, data_root):
    # MSE on unbounded ReLU outputs with a huge step grows geometrically until it overflows
    cfg = tiny_config(**{"optim.name": "sgd", "optim.lr": 50.0, "loss.name": "mse", "model.activation": "relu",
                         "train.epochs": 2})
    summary = train.run(cfg, tmp_path / "d", log=quiet)
    assert summary["status"] == "diverged"
    assert (tmp_path / "d" / "summary.json").exists()
    assert any(f["code"] == "diverged" for f in finish_run(tmp_path / "d", log=quiet)["findings"])


def test_early_stopping(tmp_path, tiny_config, data_root):
    # a learning rate of ~0 cannot improve the validation accuracy, so patience 2 stops the run
    cfg = tiny_config(**{"optim.lr": 1e-12, "train.eval_every": 1, "train.early_stopping.patience": 2})
    summary = train.run(cfg, tmp_path / "e", log=lambda *_: None)
    assert summary["status"] == "early_stopped" and summary["time"]["steps"] == 3


def test_existing_run_is_not_overwritten(tmp_path, tiny_config, data_root):
    cfg = tiny_config(**{"train.epochs": 0.1})
    train.run(cfg, tmp_path / "r", log=lambda *_: None)
    before = (tmp_path / "r" / "summary.json").read_text()
    with pytest.raises(ConfigError, match="--force"):
        train.run(cfg, tmp_path / "r", log=lambda *_: None)
    assert (tmp_path / "r" / "summary.json").read_text() == before
    train.run(cfg, tmp_path / "r", force=True, log=lambda *_: None)


def test_double_softmax_warns(tmp_path, tiny_config, data_root):
    cfg = tiny_config(**{"model.softmax_output": True, "train.epochs": 0.2})
    summary = train.run(cfg, tmp_path / "s", log=lambda *_: None)
    assert any("double softmax" in w for w in summary["warnings"])


def test_each_precision_trains(tmp_path, tiny_config, data_root, precision):
    summary = train.run(tiny_config(**{"train.precision": precision}), tmp_path / "b", log=lambda *_: None)
    assert summary["precision"]["used"] == precision
    assert summary["channels_last"]["used"] is (precision != "fp16")  # runtime.CHANNELS_LAST_FASTER on a CPU
    assert summary["status"] == "completed" and summary["test"]["accuracy"] > 0.5
    if precision == "fp16":  # the loss scaler is part of the state a resume needs
        assert runs.load_checkpoint(tmp_path / "b" / "last.pt")["scaler"]["scale"] > 0


def _cli(*args, **kw):
    env = dict(os.environ, CNNLAB_NO_REEXEC="1")
    return subprocess.Popen([sys.executable, "-m", "cnnlab.cli", *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


TINY = ["data.train_limit=2000", "data.val_size=500", "train.epochs=2", "train.batch_size=50",
        "train.eval_every=10", "train.progress=false", "optim.lr=0.003", "model.dropout=0.3",
        "model.activation=relu", "data.augment.flip=true", "sched.name=cosine", "sched.interval=step"]


# airbench94's ingredients keep state across steps (the lookahead's slow copy, the once-flipped padded images)
AIRBENCH_STATE = ["train.lookahead=0.77", "data.augment.flip_mode=alternate", "data.augment.crop_padding=2",
                  "data.augment.pre_pad=true"]


# two batches of 25 a step (40 optimizer steps an epoch, as the others' 40 batches of 50), clipped: a stop
# falls between optimizer steps, never between the batches of one
ACCUMULATE = ["train.batch_size=25", "train.accumulate=2", "optim.clip_grad_norm=0.5", "train.precision=fp32"]


# every random augmentation draws from the checkpointed generator: a resume draws what the full run drew
AUGMENT = ["data.augment.rotate=15", "data.augment.translate=0.1", "data.augment.auto=trivial",
           "data.augment.mixup=0.2", "data.augment.cutmix=1.0", "loss.label_smoothing=0.1", "train.precision=fp32"]


# the default run resumes with every stateful ingredient at once; each alone runs with the slow tests (a failure
# there says which one lost its state)
EVERY_STATE = AIRBENCH_STATE + ACCUMULATE + AUGMENT[:-1]


@pytest.mark.parametrize("extra", [pytest.param([f"train.precision={p}"], id=p) for p in PRECISIONS] + [
    pytest.param(EVERY_STATE, id="every_stateful_ingredient"),
    pytest.param(AIRBENCH_STATE + ["train.precision=fp32"], marks=pytest.mark.slow, id="lookahead_alternate_prepad"),
    pytest.param(ACCUMULATE, marks=pytest.mark.slow, id="accumulate_clip"),
    pytest.param(AUGMENT, marks=pytest.mark.slow, id="affine_trivial_mix")])
def test_sigint_then_resume_matches_an_uninterrupted_run(tmp_path, data_root, extra):
    full = _cli("train", "recipes/quickstart_lenet5_mnist.yaml", *TINY, *extra, "--out", str(tmp_path / "full"))
    assert full.wait(timeout=300) == 0, full.stdout.read()

    part = _cli("train", "recipes/quickstart_lenet5_mnist.yaml", *TINY, *extra, "--out", str(tmp_path / "part"))
    metrics = tmp_path / "part" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and len(runs.read_jsonl(metrics)) < 2:
        time.sleep(0.05)
    part.send_signal(signal.SIGINT)
    assert part.wait(timeout=120) != 0
    interrupted = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert interrupted["status"] == "interrupted"
    assert runs.load_checkpoint(tmp_path / "part" / "last.pt")["step"] < 80

    resumed = _cli("train", "--resume", str(tmp_path / "part"))
    assert resumed.wait(timeout=300) == 0, resumed.stdout.read()
    a = json.loads((tmp_path / "full" / "summary.json").read_text())
    b = json.loads((tmp_path / "part" / "summary.json").read_text())
    assert b["status"] == "completed"
    assert a["test"] == b["test"] and a["best"] == b["best"]
    wa = runs.load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    wb = runs.load_checkpoint(tmp_path / "part" / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [r["step"] for r in runs.read_jsonl(tmp_path / "part" / "metrics.jsonl")] == list(range(10, 81, 10))


def test_frozen_backbone_trains_the_head_on_cached_features(tmp_path, tiny_config, data_root):
    from cnnlab.config.load import load_config

    first = train.run(tiny_config(), tmp_path / "pre", log=lambda *_: None)
    cfg = tiny_config(**{"model.init_from": str(tmp_path / "pre"), "train.finetune": "head", "optim.lr": 0.01})
    summary = train.run(cfg, tmp_path / "head", log=lambda *_: None)
    assert any("features of all" in w for w in summary["warnings"])
    before = runs.load_checkpoint(tmp_path / "pre" / "best.pt")["model"]
    after = runs.load_checkpoint(tmp_path / "head" / "last.pt")["model"]
    assert all(torch.equal(before[k], after[k]) for k in before if not k.startswith("fc."))
    assert not torch.equal(before["fc.weight"], after["fc.weight"])
    # the head-only model scores the same through the full network (cnnlab eval re-runs the backbone)
    again = predict.evaluate_run(tmp_path / "head", ["test"])
    assert again["test"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-3)


def test_no_validation_split_keeps_the_latest_weights(tmp_path, tiny_config, data_root):
    summary = train.run(tiny_config(**{"data.val_size": 0, "train.eval_every": 5}), tmp_path / "v", log=quiet)
    assert summary["status"] == "completed" and summary["val"]["accuracy"] is None
    assert summary["best"]["step"] == 10 and summary["test"]["accuracy"] > 0.3
    finish_run(tmp_path / "v", log=quiet)
    assert (tmp_path / "v" / "report.html").exists()


def test_a_tiny_fraction_of_an_epoch_still_trains_one_step(tmp_path, tiny_config, data_root):
    # 0.01 of the 10 steps of an epoch rounds to none; a positive epochs value must still train
    summary = train.run(tiny_config(**{"train.epochs": 0.01}), tmp_path / "f", log=lambda *_: None)
    rows = runs.read_jsonl(tmp_path / "f" / "metrics.jsonl")
    assert summary["status"] == "completed" and [r["step"] for r in rows] == [1]


def test_tensorboard_gets_every_evaluation_point(tmp_path, tiny_config, data_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.run(tiny_config(**{"train.eval_every": 5, "train.tensorboard": True}), tmp_path / "tb", log=lambda *_: None)
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/accuracy", "val/loss", "val/accuracy", "lr"} <= set(events.Tags()["scalars"])
    val = events.Scalars("val/accuracy")
    rows = runs.read_jsonl(tmp_path / "tb" / "metrics.jsonl")
    assert [e.step for e in val] == [5, 10]
    assert [e.value for e in val] == pytest.approx([r["val_accuracy"] for r in rows])


def test_the_learning_curve_logs_the_body_lr_and_the_head_lr(tmp_path, tiny_config, data_root):
    cfg = tiny_config(**{"optim.head_lr": 0.03, "train.eval_every": 5, "train.epochs": 0.5})
    train.run(cfg, tmp_path / "h", log=quiet)
    rows = runs.read_jsonl(tmp_path / "h" / "metrics.jsonl")
    assert [(r["lr"], r["head_lr"]) for r in rows] == [(0.003, 0.03)]
    assert list(rows[0])[:4] == ["step", "epoch", "lr", "head_lr"]
    train.run(tiny_config(**{"train.epochs": 0.5}), tmp_path / "b", log=quiet)
    assert "head_lr" not in runs.read_jsonl(tmp_path / "b" / "metrics.jsonl")[0]


class _OnDevice:
    """A stored tensor as map_location would give it on another device: records the move to the CPU."""

    def __init__(self, tensor, moved):
        self.tensor, self.moved = tensor, moved

    def cpu(self):
        self.moved.append(True)
        return self.tensor


def test_restore_moves_rng_states_to_the_cpu_and_skips_gpus_not_visible(tmp_path, tiny_config, monkeypatch):
    from types import SimpleNamespace

    from cnnlab.training.optim import build_schedule

    cfg = tiny_config()
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(1)
    s = SimpleNamespace(model=model, optimizer=opt, schedule=build_schedule(opt, cfg.sched, 10, 1), ema=None, scaler=None,
                        aug_gen=gen, progress=Progress(step=3), cfg=cfg, device=torch.device("cpu"), preprocess={},
                        train_step=None)
    state = Checkpoint.of(s)
    moved, cuda_set = [], []
    state.rng = {"torch": _OnDevice(state.rng["torch"], moved), "augment": _OnDevice(gen.get_state(), moved),
                 "cuda": [torch.zeros(16, dtype=torch.uint8)] * 3}  # saved on 3 GPUs
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: cuda_set.append(len(states)))
    s.progress = Progress()
    state.restore(s, tmp_path / "last.pt")
    assert moved == [True, True] and cuda_set == [1] and s.progress.step == 3
