import pytest
import torch
from torch import nn

from cnnlab.config.load import load_config
from cnnlab.training.optim import build_loss, build_optimizer, build_scheduler, nll_of
from cnnlab.registry import LOSSES, OPTIMIZERS, SCHEDULERS


@pytest.mark.parametrize("name", OPTIMIZERS.names())
def test_every_optimizer_takes_a_step(name):
    model = nn.Linear(4, 2)
    cfg = load_config(None, {"optim.name": name, "optim.lr": 0.1})
    opt = build_optimizer(model.parameters(), cfg.optim)
    before = model.weight.detach().clone()
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()
    assert not torch.equal(before, model.weight)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_a_step_the_loss_scaler_skips_leaves_the_optimizer_as_it_was(name):
    # fp16's first steps overflow and are skipped; torch's fused SGD then left its momentum uninitialised
    # (build_optimizer's scaled=True avoids it). The trainer's optimizer must match the textbook one after.
    cfg = load_config(None, {"optim.name": name, "optim.lr": 0.1, "optim.momentum": 0.9, "optim.nesterov": True})
    weights = []
    for fused, scaled in ((False, False), (True, True)):
        p = nn.Parameter(torch.ones(4))
        opt, scaler = build_optimizer([p], cfg.optim, fused=fused, scaled=scaled), torch.amp.GradScaler("cpu")
        for grad in (torch.tensor([float("inf"), 1.0, 1.0, 1.0]), torch.ones(4)):  # one skipped step, one real
            scaler.scale(torch.ones(()))
            p.grad = grad * scaler.get_scale()
            scaler.step(opt)
            scaler.update()
        weights.append(p.detach().clone())
    assert torch.isfinite(weights[1]).all() and torch.allclose(weights[0], weights[1])
    assert not torch.equal(weights[1], torch.ones(4))  # the real step was taken


@pytest.mark.parametrize("name", [n for n in SCHEDULERS.names() if n != "plateau"])
def test_every_schedule_steps(name):
    extra = {"sched.milestones": [2, 4]} if name == "multistep" else {}
    cfg = load_config(None, {"sched.name": name, **extra})
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    sched = build_scheduler(opt, cfg.sched, total_steps=10)
    if sched is None:
        assert name == "none"
        return
    lrs = []
    for _ in range(9):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    assert all(lr >= 0 for lr in lrs) and len(set(lrs)) > 1


def test_step_schedule_every_iteration_matches_study_e():
    cfg = load_config(None, {"sched.name": "step", "sched.step_size": 100, "sched.gamma": 0.9, "sched.interval": "step"})
    opt = torch.optim.Adam(nn.Linear(2, 2).parameters(), lr=0.001)
    sched = build_scheduler(opt, cfg.sched, total_steps=1000)
    for _ in range(250):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.001 * 0.9 ** 2)


@pytest.mark.parametrize("name", LOSSES.names())
def test_every_loss_is_finite_and_differentiable(name):
    out = torch.randn(16, 10, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    loss_in = out.log_softmax(1) if name == "nll" else out
    loss = build_loss(load_config(None, {"loss.name": "cross_entropy"}).loss.model_copy(update={"name": name}), 10)(loss_in, y)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(out.grad).all()


def test_mse_uses_one_hot_targets():
    loss = build_loss(load_config(None).loss.model_copy(update={"name": "mse"}), 3)
    out = torch.tensor([[1.0, 0.0, 0.0]])
    assert loss(out, torch.tensor([0])) == 0
    assert loss(out, torch.tensor([1])) == pytest.approx(2 / 3)


def test_label_smoothing_is_applied():
    cfg = load_config(None, {"loss.label_smoothing": 0.1})
    out, y = torch.tensor([[10.0, -10.0]]), torch.tensor([0])
    assert build_loss(cfg.loss, 2)(out, y) > nn.CrossEntropyLoss()(out, y)


@pytest.mark.parametrize("kind", ["logits", "log_probs", "probs"])
def test_nll_of_agrees_across_output_kinds(kind):
    logits = torch.randn(5, 4)
    y = torch.randint(0, 4, (5,))
    out = {"logits": logits, "log_probs": logits.log_softmax(1), "probs": logits.softmax(1)}[kind]
    torch.testing.assert_close(nll_of(out, y, kind), nn.functional.cross_entropy(logits, y, reduction="none"))


# ----------------------------------------------------------------------------- when the schedule steps


def _schedule(**overrides):
    from cnnlab.training.optim import build_schedule

    cfg = load_config(None, overrides)
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    return opt, build_schedule(opt, cfg.sched, total_steps=100, epochs=10)


def _lr(opt):
    return opt.param_groups[0]["lr"]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_a_schedule_steps_only_at_its_interval(interval):
    opt, sched = _schedule(**{"sched.name": "step", "sched.step_size": 1, "sched.gamma": 0.5, "sched.interval": interval})
    sched.after_eval(1.0, epoch_end=True)  # not a metric schedule: evaluation points do nothing
    assert _lr(opt) == 1.0
    opt.step()
    sched.after_step()
    assert _lr(opt) == (0.5 if interval == "step" else 1.0)
    sched.after_epoch()
    assert _lr(opt) == 0.5


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_plateau_steps_on_the_validation_loss_only(interval):
    opt, sched = _schedule(**{"sched.name": "plateau", "sched.patience": 0, "sched.gamma": 0.1,
                              "sched.interval": interval})
    for _ in range(3):
        sched.after_step()
        sched.after_epoch()
    assert _lr(opt) == 1.0  # never without a metric
    sched.after_eval(None, epoch_end=True)  # no validation split: nothing to step on
    sched.after_eval(1.0, epoch_end=True)
    sched.after_eval(1.0, epoch_end=False)  # mid-epoch: counts only with interval=step
    assert _lr(opt) == pytest.approx(0.1 if interval == "step" else 1.0)
    sched.after_eval(1.0, epoch_end=True)
    assert _lr(opt) == pytest.approx(0.01 if interval == "step" else 0.1)


def test_no_schedule_does_nothing_and_saves_nothing():
    opt, sched = _schedule(**{"sched.name": "none"})
    sched.after_step(), sched.after_epoch(), sched.after_eval(1.0, epoch_end=True)
    assert _lr(opt) == 1.0 and sched.state_dict() == {}
    sched.load_state_dict({})


def test_schedule_state_round_trips():
    opt, sched = _schedule(**{"sched.name": "cosine", "sched.interval": "step"})
    for _ in range(7):
        opt.step()
        sched.after_step()
    opt2, sched2 = _schedule(**{"sched.name": "cosine", "sched.interval": "step"})
    opt2.load_state_dict(opt.state_dict())  # a checkpoint restores both (the lr lives in the optimizer)
    sched2.load_state_dict(sched.state_dict())
    opt.step(), opt2.step()
    sched.after_step(), sched2.after_step()
    assert _lr(opt) == _lr(opt2) != 1.0


def test_lrs_of_logs_the_body_and_the_head_separately():
    from cnnlab.training.optim import lrs_of

    body, head = nn.Linear(2, 2), nn.Linear(2, 2)
    opt = torch.optim.SGD([{"params": body.parameters(), "name": "body"},
                           {"params": head.parameters(), "name": "head", "lr": 0.1}], lr=0.001)
    assert lrs_of(opt) == {"lr": 0.001, "head_lr": 0.1}
    assert lrs_of(torch.optim.SGD([{"params": body.parameters(), "name": "body"},
                                   {"params": head.parameters(), "name": "body_no_decay"}], lr=0.01)) == {"lr": 0.01}


def test_adamw_trains_with_its_own_decay_from_cnnlab_train_and_from_a_sweep(tmp_path, data_root):
    """A sweep run's config is a round-tripped dict with every field set; it must still mean what the file
    means when trained directly (AdamW's decay 0.01), and an explicit 0 must stay 0."""
    import yaml

    import cnnlab
    from cnnlab.runs import load_checkpoint
    from cnnlab.sweeps.run import run_sweep

    study = {"name": "adamw", "data": {"name": "mnist", "train_limit": 300, "val_size": 100},
             "model": {"name": "linear"}, "optim": {"name": "adamw", "lr": 0.01},
             "train": {"epochs": 1, "batch_size": 100, "progress": False, "threads": 1}}
    (tmp_path / "adamw.yaml").write_text(yaml.safe_dump(study))
    (tmp_path / "sw.yaml").write_text(yaml.safe_dump({"base": "adamw.yaml",
                                                       "axes": {"optim.weight_decay": [None, 0.0]}}))

    def decays(run_dir):
        return {g["weight_decay"] for g in load_checkpoint(run_dir / "last.pt")["optimizer"]["param_groups"]}

    direct = cnnlab.train(tmp_path / "adamw.yaml", out=tmp_path / "direct", report=False)
    rows = run_sweep(tmp_path / "sw.yaml", out_dir=tmp_path / "sweep")
    swept = {r["settings"]["optim.weight_decay"]: tmp_path / "sweep" / r["run_dir"] for r in rows}
    assert direct.status == "completed" and [r["status"] for r in rows] == ["completed"] * 2
    assert decays(tmp_path / "direct") == decays(swept[0.01]) == {0.01}
    assert decays(swept[0.0]) == {0.0}
