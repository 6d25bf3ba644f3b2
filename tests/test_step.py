"""cnnlab.training.step: the step's decisions (drop the short last batch, compile mode), the eager step against a
hand-written one, and a tiny compiled run on the CPU (slow: compiling takes a minute on 2 busy cores)."""
import math

import pytest
import torch
from torch import nn

from cnnlab.training import loop as train
from cnnlab import runs
from cnnlab.models.airbench import airbench
from cnnlab.training.step import Lookahead, Step, StepParts, WhiteningBiasFreeze, compile_mode, drops_last, steps_per_epoch


def test_the_short_last_batch_is_dropped_when_compiling_unless_told():
    assert drops_last(None, compile=True, n=530, batch_size=50)
    assert not drops_last(None, compile=False, n=530, batch_size=50)
    assert not drops_last(False, compile=True, n=530, batch_size=50)  # the user keeps it (one recompile)
    assert drops_last(True, compile=False, n=530, batch_size=50)
    assert not drops_last(None, compile=True, n=500, batch_size=50)  # no short batch to drop
    assert not drops_last(True, compile=True, n=30, batch_size=50)  # no full batch: the one batch is static
    assert steps_per_epoch(530, 50, True) == 10 and steps_per_epoch(530, 50, False) == 11
    assert steps_per_epoch(30, 50, False) == 1


def test_cuda_graphs_only_on_a_gpu_with_static_shapes():
    assert compile_mode("cuda", static_shapes=True) == "reduce-overhead"
    assert compile_mode("cuda", static_shapes=False) == "max-autotune-no-cudagraphs"
    assert compile_mode("cpu", static_shapes=True) == "default"


def test_the_eager_step_is_the_textbook_step_and_sums_on_the_device():
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(0, 3, (16,))
    nets = [nn.Sequential(nn.Flatten(), nn.Linear(64, 3)) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(n.parameters(), lr=0.01) for n in nets]
    step = Step(StepParts(net=nets[0], model=nets[0], loss_fn=nn.CrossEntropyLoss(), optimizer=opts[0],
                          scaler=None, ema=None, precision="fp32", device=torch.device("cpu")))
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    for _ in range(3):
        assert step(x, y, loss_sum, correct) == 0.0  # eager: no compile time
    total, hits = 0.0, 0
    for _ in range(3):
        opts[1].zero_grad()
        out = nets[1](x)
        loss = nn.functional.cross_entropy(out, y)
        loss.backward()
        opts[1].step()
        total, hits = total + float(loss.detach()) * len(y), hits + int((out.argmax(1) == y).sum())
    assert all(torch.equal(a, b) for a, b in zip(nets[0].parameters(), nets[1].parameters()))
    assert math.isclose(float(loss_sum), total, rel_tol=1e-6) and int(correct) == hits


def test_lookahead_pulls_the_weights_to_a_slow_copy_on_a_cubic_ramp_and_ends_on_it():
    net = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    look = Lookahead(net, decay=0.5, every=2, total_steps=4)
    assert look.ramp(0) == 0 and look.ramp(2) == 0.5 * 0.5 ** 3 and look.ramp(4) == 0.5
    w = net[0].weight
    start = w.detach().clone()
    with torch.no_grad():
        w.add_(1.0)
    look.after_step(1)  # not a multiple of `every`: nothing happens
    assert torch.equal(w, start + 1) and torch.equal(look.slow[0], start)
    look.after_step(2)  # slow = d*slow + (1-d)*w with d = 0.0625, and w reset to it
    expected = 0.0625 * start + 0.9375 * (start + 1)
    assert torch.allclose(look.slow[0], expected) and torch.allclose(w, expected)
    assert torch.equal(net[1].running_mean, look.slow[-3])  # batch-norm statistics are averaged too
    with torch.no_grad():
        w.add_(2.0)
    look.after_step(3)
    assert torch.allclose(w, expected + 2)
    with torch.no_grad():
        w.add_(2.0)
    look.after_step(4)  # the last step: d = 0.5, then the weights are the slow copy
    assert torch.allclose(w, 0.5 * expected + 0.5 * (expected + 4)) and torch.equal(w, look.slow[0])


def test_a_run_with_lookahead_keeps_its_slow_copy_in_the_checkpoint(tiny_config, tmp_path, data_root):
    cfg = tiny_config(**{"train.lookahead": 0.77, "train.lookahead_every": 3, "data.val_size": 0})
    summary = train.run(cfg, tmp_path / "a", log=lambda m: None)
    plain = train.run(tiny_config(**{"data.val_size": 0}), tmp_path / "b", log=lambda m: None)
    state = runs.load_checkpoint(tmp_path / "a" / "last.pt")
    weights = [t for t in state["model"].values() if t.is_floating_point()]
    assert len(state["lookahead"]["slow"]) == len(weights)
    assert all(torch.equal(a, b) for a, b in zip(state["lookahead"]["slow"], weights))  # ends on the slow copy
    assert summary["status"] == "completed" and summary["test"]["accuracy"] != plain["test"]["accuracy"]
    assert not runs.load_checkpoint(tmp_path / "b" / "last.pt")["lookahead"]


def test_the_whitening_bias_learns_only_for_its_steps():
    torch.manual_seed(0)
    model = airbench(num_classes=3, in_channels=1, width=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.1)
    step = Step(StepParts(net=model, model=model, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, scaler=None,
                          ema=None, precision="fp32", device=torch.device("cpu"),
                          freeze=WhiteningBiasFreeze(model, steps=2)))
    x, y = torch.randn(8, 1, 12, 12), torch.randint(0, 3, (8,))
    loss_sum, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
    bias, head = [model.whiten.bias.detach().clone()], [model.head.weight.detach().clone()]
    for i in range(4):
        step(x, y, loss_sum, correct, i)
        bias.append(model.whiten.bias.detach().clone())
        head.append(model.head.weight.detach().clone())
    assert not torch.equal(bias[0], bias[1]) and not torch.equal(bias[1], bias[2])  # steps 0 and 1 learn
    assert torch.equal(bias[2], bias[3]) and torch.equal(bias[3], bias[4])  # then it stays (no decay either)
    assert not torch.equal(head[3], head[4])  # the rest still trains


def test_summary_records_the_step_and_drops_the_short_batch_only_when_asked(tiny_config, tmp_path, data_root):
    kept = train.run(tiny_config(**{"data.train_limit": 530, "train.batch_size": 50}), tmp_path / "a", log=lambda m: None)
    dropped = train.run(tiny_config(**{"data.train_limit": 530, "train.batch_size": 50, "train.drop_last": True}),
                        tmp_path / "b", log=lambda m: None)
    assert kept["time"]["steps"] == 11 and dropped["time"]["steps"] == 10
    assert kept["step"]["compiled"] is False and kept["time"]["compile_s"] == 0
    assert dropped["step"]["drop_last"] is True and kept["step"]["drop_last"] is False
    assert kept["step"]["tf32"]["on"] is False  # a CPU has no TF32


@pytest.mark.slow
def test_a_compiled_run_completes_without_recompiles_and_matches_eager(tiny_config, tmp_path, data_root):
    import torch._dynamo

    extra = {"data.train_limit": 530, "train.batch_size": 50, "train.epochs": 2, "train.threads": 1,
             "data.augment.flip": True, "train.ema": 0.9}
    eager = train.run(tiny_config(**extra), tmp_path / "eager", log=lambda m: None)
    torch._dynamo.reset()
    before = torch._dynamo.config.error_on_recompile
    torch._dynamo.config.error_on_recompile = True  # a recompile (the short last batch, an epoch) fails the run
    try:
        compiled = train.run(tiny_config(**extra, **{"train.compile": True}), tmp_path / "compiled",
                             log=lambda m: None)
    finally:
        torch._dynamo.config.error_on_recompile = before
    assert compiled["status"] == "completed", compiled["error"]
    assert compiled["step"] == {"compiled": True, "mode": "default", "drop_last": True, "tf32": compiled["step"]["tf32"]}
    assert compiled["time"]["steps"] == 20  # 2 epochs of 10 full batches; the 30 left over are dropped
    assert compiled["time"]["compile_s"] > 0
    # compile time is not training time: the images/s figure comes from the steady steps
    assert compiled["time"]["train_s"] < compiled["time"]["compile_s"]
    # the same images in the same order but the last 30 of each epoch, through fused kernels: close, not equal
    ref = train.run(tiny_config(**extra, **{"train.drop_last": True}), tmp_path / "eager-dropped", log=lambda m: None)
    assert math.isclose(compiled["final_train_loss"], ref["final_train_loss"], rel_tol=1e-3)
    assert abs(compiled["test"]["accuracy"] - ref["test"]["accuracy"]) <= 0.01
    assert eager["time"]["steps"] == 22


def test_what_the_loop_adds_per_step_stays_small(tmp_path, data_root):
    """Counted, not timed (benchmarks/bench_step_ops.py): the quick start's LeNet-5 dispatches 69 aten
    operators per step for its own forward, loss and backward; the loop around it added 78 with crop,
    flip and EMA and 42 without before fused Adam, the one-gather crop+flip, EMA without detaches and
    sums without temporaries (27 and 11 after). The bounds catch a return of most of that."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_step_ops", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_step_ops.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for augment_and_ema, bound in ((True, 32), (False, 14)):
        parts, _, steps = bench.count(augment_and_ema, augment_and_ema, 8, tmp_path / str(augment_and_ema))
        assert steps == 6 and sum(parts[p] for p in bench.MODEL_PARTS) > 0
        assert bench.loop_adds(parts, steps) <= bound, dict(parts)


# ----------------------------------------------------------------------------- accumulation and clipping


def _linear_step(clip=None, scaler=None, seed=0, lr=0.1):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 3))  # no batch norm
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    return net, Step(StepParts(net=net, model=net, loss_fn=nn.CrossEntropyLoss(), optimizer=opt, scaler=scaler,
                               ema=None, precision="fp32", device=torch.device("cpu"), clip_grad_norm=clip))


@pytest.mark.parametrize("sizes", [[8, 8, 8, 8], [16, 16, 8]], ids=["equal", "short_last"])
def test_accumulating_k_batches_equals_one_batch_of_all_their_images(sizes):
    torch.manual_seed(1)
    x, y = torch.randn(sum(sizes), 1, 8, 8), torch.randint(0, 3, (sum(sizes),))
    big_net, big = _linear_step()
    acc_net, acc = _linear_step()
    sums = [(torch.zeros(()), torch.zeros((), dtype=torch.long)) for _ in range(2)]
    for step in range(2):  # two optimizer steps: momentum carries the first one's summed gradient
        big(x, y, *sums[0], step)
        parts = list(zip(x.split(sizes), y.split(sizes)))
        acc.accumulated(iter(parts), len(y), *sums[1], step)
    for a, b in zip(big_net.parameters(), acc_net.parameters()):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    plain_net, _ = _linear_step()
    assert not torch.allclose(plain_net[1].weight, acc_net[1].weight)  # the steps did move the weights
    assert torch.allclose(sums[0][0], sums[1][0]) and torch.equal(sums[0][1], sums[1][1])  # the running sums too
    # a wrong weighting (each batch's mean loss summed, not averaged) would take a k times larger step
    wrong_net, wrong = _linear_step()
    for xb, yb in zip(x.split(sizes), y.split(sizes)):
        wrong.accumulated([(xb, yb)], len(yb), *sums[1])  # one step per batch: not the same either
    assert not torch.allclose(wrong_net[1].weight, acc_net[1].weight, rtol=1e-3)


def _hand_clipped_update(net, x, y, clip, lr):
    """SGD's first step (momentum 0.9 starts from the gradient itself) with the gradient clipped by hand."""
    ref = [q.detach().clone() for q in net.parameters()]
    grads = torch.autograd.grad(nn.functional.cross_entropy(net(x), y), list(net.parameters()))
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    scale = min(1.0, clip / (float(norm) + 1e-6))
    return [w - lr * g * scale for w, g in zip(ref, grads)], float(norm)


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "grad_scaler"])
def test_clipping_bounds_the_gradient_norm_as_computed_by_hand(scaled):
    torch.manual_seed(2)
    x, y = torch.randn(32, 1, 8, 8) * 5, torch.randint(0, 3, (32,))
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0) if scaled else None
    net, step = _linear_step(clip=0.05, scaler=scaler, lr=0.5)
    expected, norm = _hand_clipped_update(net, x, y, clip=0.05, lr=0.5)
    assert norm > 0.5  # far above the bound: the clipping acts
    seen = []
    step.parts.optimizer.register_step_pre_hook(lambda opt, *_: seen.append(float(torch.sqrt(sum(
        (q.grad ** 2).sum() for g in opt.param_groups for q in g["params"])))))
    step(x, y, torch.zeros(()), torch.zeros((), dtype=torch.long))
    assert len(seen) == 1 and seen[0] <= 0.05 * (1 + 1e-4)  # what the optimizer got: the true gradient, clipped
    for w, e in zip(net.parameters(), expected):
        assert torch.allclose(w, e, rtol=1e-4, atol=1e-6)
    loose_net, loose = _linear_step(clip=1e6, lr=0.5)  # a bound above the norm leaves the gradient as it is
    unclipped, _ = _hand_clipped_update(loose_net, x, y, clip=1e9, lr=0.5)
    loose(x, y, torch.zeros(()), torch.zeros((), dtype=torch.long))
    assert all(torch.allclose(w, e, rtol=1e-4, atol=1e-6) for w, e in zip(loose_net.parameters(), unclipped))


def test_a_run_accumulating_two_half_batches_matches_one_of_full_batches(tiny_config, tmp_path, data_root):
    # 1,000 images: batches of 30 in pairs (the epoch's last pair 30 + 10) against batches of 60 (the last 40)
    common = {"model.name": "mlp", "model.hidden": [32], "optim.name": "sgd", "optim.lr": 0.05,
              "optim.momentum": 0.9, "optim.clip_grad_norm": 5.0, "train.epochs": 2, "sched.name": "cosine",
              "sched.interval": "step", "train.eval_every": 5}
    one = train.run(tiny_config(**common, **{"train.batch_size": 60}), tmp_path / "one", log=lambda m: None)
    acc = train.run(tiny_config(**common, **{"train.batch_size": 30, "train.accumulate": 2}), tmp_path / "acc",
                    log=lambda m: None)
    assert one["time"]["steps"] == acc["time"]["steps"] == 34  # optimizer steps: 17 an epoch
    rows = [runs.read_jsonl(tmp_path / r / "metrics.jsonl") for r in ("one", "acc")]
    assert [r["step"] for r in rows[0]] == [r["step"] for r in rows[1]] == [5, 10, 15, 17, 20, 25, 30, 34]
    assert all(math.isclose(a["lr"], b["lr"]) for a, b in zip(*rows))  # the schedule steps once per optimizer step
    assert all(math.isclose(a["train_loss"], b["train_loss"], rel_tol=1e-4) for a, b in zip(*rows))
    wa, wb = (runs.load_checkpoint(tmp_path / r / "last.pt")["model"] for r in ("one", "acc"))
    assert all(torch.allclose(wa[k], wb[k], rtol=1e-4, atol=1e-5) for k in wa)
    assert acc["time"]["train_images_per_s"] and acc["config"]["train"]["accumulate"] == 2
