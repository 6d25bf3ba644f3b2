"""cnnlab.training.scoring: scoring splits, test-time augmentation, re-scoring a run (cnnlab eval)."""
import time

import pytest
import torch

from cnnlab import runs
from cnnlab.training import loop as train
from cnnlab.training.scoring import Evaluator, time_line
from cnnlab.inference.predict import evaluate_run


def quiet(*_):
    pass


@pytest.mark.parametrize("tta,views", [
    ("flip", lambda x: [x, x.flip(3)]),
    ("translate", lambda x: [x, torch.roll(x, (1, 1), (2, 3)), torch.roll(x, (-1, -1), (2, 3))]),
    ("flip_translate", lambda x: [x, x.flip(3), torch.roll(x, (1, 1), (2, 3)), torch.roll(x, (-1, -1), (2, 3))]),
])
def test_test_time_augmentation_averages_the_views_probabilities(tta, views):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(36, 3)).eval()  # sees exact pixel positions
    x = torch.randn(5, 1, 6, 6)
    ev = Evaluator(lambda v, g: v, 100, "fp32", torch.device("cpu"), "logits", 3, tta=tta)
    with torch.no_grad():
        expected = torch.stack([model(v).softmax(1) for v in views(x)]).mean(0).log()
        plain = model(x).log_softmax(1)
        got = ev.outputs(model, x)
    assert torch.allclose(got, expected, atol=1e-6) and not torch.allclose(got, plain, atol=1e-3)
    scored = ev.score(model, x, expected.argmax(1))
    assert scored["accuracy"] == 1.0 and scored["loss"] == pytest.approx(float(-expected.max(1).values.mean()), abs=1e-5)


def test_test_time_augmentation_refuses_feature_vectors():
    ev = Evaluator(lambda v, g: v, 100, "fp32", torch.device("cpu"), "logits", 3, tta="flip")
    with pytest.raises(ValueError, match="features, not images"):
        ev.score(torch.nn.Linear(8, 3), torch.randn(4, 8), torch.zeros(4, dtype=torch.long))


def test_eval_run_reproduces_the_summary(tmp_path, tiny_config, data_root):
    summary = train.run(tiny_config(), tmp_path / "r", log=quiet)
    again = evaluate_run(tmp_path / "r", ["test", "val"])
    assert again["test"]["accuracy"] == summary["test"]["accuracy"]
    assert again["val"]["confusion"] == summary["val"]["confusion"]


def test_a_frozen_backbone_with_tta_is_scored_through_the_whole_network(tmp_path, tiny_config, data_root):
    # The head trains on cached 2-D features; flipping needs images, so TTA scores the full model.
    train.run(tiny_config(), tmp_path / "pre", log=quiet)
    cfg = tiny_config(**{"model.init_from": str(tmp_path / "pre"), "train.finetune": "head", "optim.lr": 0.01,
                         "train.tta": "flip"})
    summary = train.run(cfg, tmp_path / "head", log=quiet)
    assert summary["status"] == "completed" and any("features of all" in w for w in summary["warnings"])
    assert 0.5 < summary["test"]["accuracy"] <= 1
    again = evaluate_run(tmp_path / "head", ["test"])
    assert again["test"]["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-3)
    assert all(r["val_loss"] is not None for r in runs.read_jsonl(tmp_path / "head" / "metrics.jsonl"))


def test_the_train_split_is_scored_only_when_the_config_asks(tmp_path, tiny_config, data_root):
    lines = []
    skipped = train.run(tiny_config(**{"train.score_train": False, "train.epochs": 0.2}), tmp_path / "a",
                        log=lines.append)
    scored = train.run(tiny_config(**{"train.epochs": 0.2}), tmp_path / "b", log=quiet)
    assert "train" not in skipped and skipped["test"]["accuracy"] == scored["test"]["accuracy"]
    assert scored["train"]["accuracy"] is not None
    assert not any(line.startswith("train ") for line in lines) and any(line.startswith("test ") for line in lines)


TIME_PARTS = ("train_s", "curve_eval_s", "eval_s", "data_s", "setup_s", "compile_s")


def test_the_time_parts_add_up_to_the_run_wall_time(tmp_path, tiny_config, data_root):
    # five learning-curve evaluations of 2,000 validation images: far from free, and timed apart from training
    cfg, lines = tiny_config(**{"train.threads": 1, "train.eval_every": 2, "data.val_size": 2000}), []
    runs.environment("cpu")  # its first call imports matplotlib (seconds on a busy machine): other_s, not a part
    t0 = time.perf_counter()
    summary = train.run(cfg, tmp_path / "r", log=lines.append)
    wall, t = time.perf_counter() - t0, summary["time"]
    assert all(t[k] >= 0 for k in TIME_PARTS) and t["curve_eval_s"] > 0 and t["eval_s"] > 0
    assert t["total_s"] <= wall and t["total_s"] == pytest.approx(wall, abs=0.5)
    assert sum(t[k] for k in TIME_PARTS) == pytest.approx(t["total_s"], abs=0.05 + 0.02 * t["total_s"])
    assert t["other_s"] == pytest.approx(t["total_s"] - sum(t[k] for k in TIME_PARTS), abs=0.01)
    line = next(line for line in lines if line.startswith("time: "))
    assert f"curve evals {t['curve_eval_s']:.1f} s" in line and f"final scoring {t['eval_s']:.1f} s" in line
    assert line.endswith(f"total {t['total_s']:.1f} s")


def test_the_time_line_says_when_the_total_is_one_session_of_several():
    t = {"train_s": 30.0, "curve_eval_s": 12.0, "eval_s": 4.0, "data_s": 1.0, "setup_s": 2.0, "compile_s": 0.0,
         "total_s": 20.0, "other_s": None, "train_images_per_s": 1000.0}
    assert time_line(t) == ("time: train 30.0 s (1,000 img/s), curve evals 12.0 s, final scoring 4.0 s, data 1.0 s, "
                            "set-up 2.0 s, total 20.0 s (this session)")
    older = {"train_s": 3.0, "eval_s": 1.0, "data_s": 0.5, "total_s": 5.0, "train_images_per_s": None}  # before these
    assert time_line(older) == "time: train 3.0 s (0 img/s), curve evals 0.0 s, final scoring 1.0 s, data 0.5 s, total 5.0 s"


def test_one_loader_rebuilds_the_run_from_its_checkpoint_and_computes_as_training_did(tmp_path, tiny_config, data_root):
    from cnnlab.inference.load import load_run

    summary = train.run(tiny_config(**{"train.precision": "auto"}), tmp_path / "r", log=quiet)
    # config.yaml is a copy for people to read: an edit to it changes neither eval nor predict
    (tmp_path / "r" / "config.yaml").write_text("model: {name: resnet50}\ntrain: {precision: fp16}\n")
    run = load_run(tmp_path / "r")
    assert run.config.model.name == "lenet5"
    assert run.compute.precision == summary["precision"]["used"]  # auto resolved here as training resolved it
    again = evaluate_run(tmp_path / "r", ["test"])
    assert again["test"]["accuracy"] == summary["test"]["accuracy"] and again["test"]["loss"] == summary["test"]["loss"]
    assert load_run(tmp_path / "r", overrides={"train.precision": "fp32"}).compute.precision == "fp32"


@pytest.mark.parametrize("monitor,words", [("val_loss", "lowest val loss"), ("val_accuracy", "highest val accuracy")])
def test_the_best_line_names_the_monitored_metric_rounded(tmp_path, tiny_config, data_root, capsys, monitor, words):
    # Issue 25 (8): "best: epoch 6.0 (step 84), val accuracy 0.5583333333333333" under monitor val_loss.
    import re

    summary = train.run(tiny_config(**{"train.monitor": monitor, "train.eval_every": 5}), tmp_path / "run")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("best"))
    best = summary["best"]
    first, second = ("val loss", "val accuracy") if monitor == "val_loss" else ("val accuracy", "val loss")
    key = first.replace(" ", "_")
    assert line.startswith(f"best ({words}): epoch {best['epoch']:g} (step {best['step']}), "
                           f"{first} {best[key]:.4f}, {second} "), line
    assert not re.search(r"\d\.\d{5,}", line), line  # every score rounded to 4 decimals
