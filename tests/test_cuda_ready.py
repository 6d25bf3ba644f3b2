"""CUDA readiness, tested on any device (issue 17): no host read of a device tensor in the step loop,
an EMA and a scaler that need none, determinism flags set and restored per run, ``train.device: cuda:N``,
one GPU per sweep worker, out-of-memory and nondeterministic-op errors as one paragraph."""
import multiprocessing
import sys

import pytest
import torch
from torch.optim.optimizer import _get_value
from torch.optim import swa_utils

from cnnlab.training import runtime
from cnnlab.sweeps import local
from cnnlab.training import loop as train
from cnnlab.config.schema import ConfigError
from cnnlab.config.load import load_config
from cnnlab.training.optim import build_optimizer

HOST_READS = ("item", "tolist", "__float__", "__int__", "__bool__")


def count_host_reads(monkeypatch, active) -> list:
    """Patch the Tensor methods that copy a value to the host; record calls while ``active()``.

    Not counted: torch's foreach optimizers reading their step counters, which they keep on the host
    (torch.optim.optimizer._get_value) unless fused, so that read never waits on a GPU."""
    calls, host_steps = [], _get_value.__code__
    for name in HOST_READS:
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            if active() and sys._getframe(1).f_code is not host_steps:
                calls.append(_name)
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return calls


def test_the_step_loop_reads_nothing_back_between_evaluation_points(tmp_path, tiny_config, data_root, monkeypatch):
    where = {"loop": False, "eval": False}
    real_loop, real_eval = train.train_loop, train.evaluation_point

    def loop(s, stop):
        where["loop"] = True
        try:
            return real_loop(s, stop)
        finally:
            where["loop"] = False

    def evaluation_point(s):
        where["eval"] = True
        try:
            return real_eval(s)
        finally:
            where["eval"] = False

    monkeypatch.setattr(train, "train_loop", loop)
    monkeypatch.setattr(train, "evaluation_point", evaluation_point)
    monkeypatch.setattr(train, "DIVERGENCE_CHECK_EVERY", 10**9)  # only the check at each evaluation point
    calls = count_host_reads(monkeypatch, lambda: where["loop"] and not where["eval"])
    # EMA (with batch norm's integer buffer), crop + flip, 2 epochs of 10 steps, an evaluation every 5 steps
    cfg = tiny_config(**{"train.ema": 0.9, "data.augment.flip": True, "data.augment.crop_padding": 2,
                         "model.batch_norm": True, "train.epochs": 2, "train.eval_every": 5})
    summary = train.run(cfg, tmp_path / "r", log=lambda *_: None)
    assert summary["status"] == "completed" and summary["time"]["steps"] == 20
    # one read per evaluation point (is the running loss finite?), none per step
    assert calls == ["__bool__"] * 4


def test_the_ema_matches_torch_and_never_reads_its_counter(monkeypatch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(),
                                torch.nn.LazyLinear(3))
    model(torch.randn(2, 1, 6, 6))
    ours = runtime.EMA(model, 0.8, torch.device("cpu"))
    theirs = swa_utils.AveragedModel(model, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(0.8), use_buffers=True)
    assert ours.n_averaged.device == next(ours.module.parameters()).device
    calls = count_host_reads(monkeypatch, lambda: True)
    for _ in range(4):
        model(torch.randn(8, 1, 6, 6)).sum().backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.1 * p.grad
        calls.clear()
        ours.update_parameters(model)
        assert calls == []
        theirs.update_parameters(model)
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    again = runtime.EMA(model, 0.8, torch.device("cpu"))
    again.load_state_dict(a)
    assert again.updates == 4


def test_fp16_loss_scaling_with_a_fused_optimizer_needs_no_item(monkeypatch):
    cfg = load_config(None, {"optim.name": "sgd", "optim.lr": 0.1, "optim.momentum": 0.9})
    model = torch.nn.Linear(4, 2)
    opt = build_optimizer(model.parameters(), cfg.optim, fused=True)
    assert opt.defaults["fused"] and getattr(opt, "_step_supports_amp_scaling", False)
    assert build_optimizer(model.parameters(), cfg.optim).defaults["foreach"]  # CPU: foreach, as before
    scaler = torch.amp.GradScaler("cpu")  # the CUDA scaler's code path, on the CPU
    calls = count_host_reads(monkeypatch, lambda: True)
    for _ in range(3):
        opt.zero_grad()
        scaler.scale(model(torch.randn(8, 4)).square().mean()).backward()
        scaler.step(opt)
        scaler.update()
    assert calls == []


def test_determinism_flags_are_set_per_run_and_restored(tmp_path, tiny_config, data_root, monkeypatch):
    seen, real_set_up = [], train.set_up

    def set_up(cfg, *a):
        seen.append((torch.are_deterministic_algorithms_enabled(),
                     torch.is_deterministic_algorithms_warn_only_enabled(), torch.backends.cudnn.deterministic))
        return real_set_up(cfg, *a)

    monkeypatch.setattr(train, "set_up", set_up)
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
              torch.backends.cudnn.deterministic)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    quiet = lambda *_: None  # noqa: E731
    train.run(tiny_config(**{"train.deterministic": True, "train.epochs": 0.2}), tmp_path / "a", log=quiet)
    after_a = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
               torch.backends.cudnn.deterministic)
    train.run(tiny_config(**{"train.epochs": 0.2}), tmp_path / "b", log=quiet)
    assert seen == [(True, False, True), (False, False, False)]  # an error, not a warning; then off again
    assert after_a == before and "CUBLAS_WORKSPACE_CONFIG" not in __import__("os").environ
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic) == before


def test_a_nondeterministic_op_names_the_fix(tiny_config):
    cfg = tiny_config(**{"train.deterministic": True})
    with pytest.raises(ConfigError) as e:
        with runtime.run_flags(cfg.train):
            # put_ raises on the CPU too, with the message CUDA's adaptive pooling and NLL backward raise
            torch.zeros(5).put_(torch.tensor([0, 1]), torch.tensor([1.0, 2.0]))
    text = str(e.value)
    assert "(put_)" in text and "train.deterministic: false" in text
    assert "\n" not in text and not torch.are_deterministic_algorithms_enabled()


def test_cuda_out_of_memory_is_one_paragraph_naming_the_settings(tiny_config):
    cfg = tiny_config(**{"train.batch_size": 512})
    with pytest.raises(ConfigError) as e:
        with runtime.run_flags(cfg.train):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 7.8 GiB total)")
    text = str(e.value)
    for setting in ("train.batch_size (now 512)", "train.eval_batch_size", "data.resize", "bf16"):
        assert setting in text
    with pytest.raises(ValueError, match="unrelated"):  # other errors pass through untouched
        with runtime.run_flags(cfg.train):
            raise ValueError("unrelated")


def test_train_device_names_a_gpu_by_index(tiny_config, monkeypatch):
    assert tiny_config(**{"train.device": "cuda:1"}).train.device == "cuda:1"
    for bad in ("cuda:x", "gpu", "cuda:-1"):
        with pytest.raises(ConfigError, match="cuda:N"):
            tiny_config(**{"train.device": bad})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert runtime.pick_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ConfigError, match="sees 2 .cuda:0 to cuda:1"):
        runtime.pick_device("cuda:2")


def test_each_sweep_worker_gets_its_own_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert runtime.visible_gpus() == ("3", "5")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert runtime.visible_gpus() == ("0", "1")
    started, got = multiprocessing.get_context("spawn").Value("i", 0), []
    for _ in range(3):  # what each new worker process runs first
        local.assign_gpu(started, ("0", "1"))  # (the rest of _worker_init ties the worker to its parent)
        got.append(__import__("os").environ["CUDA_VISIBLE_DEVICES"])
    assert got == ["0", "1", "0"]


def test_the_splits_go_to_the_device_only_when_they_fit():
    from cnnlab.data.placement import choose_placement

    # a nearly full GPU (1000 bytes free) on any machine: half of it may hold the data, then host RAM
    assert choose_placement(500, "cuda", 1000, 10**9) == "device"
    assert choose_placement(501, "cuda", 1000, 10**9) == "pinned"
    assert choose_placement(501, "cuda", 1000, 1000) == "stream"
    assert choose_placement(10**12, "cpu", None, None) == "device"  # nothing measured: nothing refused


def test_evaluation_halves_its_batch_when_memory_runs_out():
    from cnnlab.training.scoring import Evaluator

    class Small(torch.nn.Module):  # runs out of memory above 64 images, as a GPU would
        def forward(self, x):
            if len(x) > 64:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
            return x.flatten(1)[:, :3]

    ev = Evaluator(lambda x, g: x.float(), 1000, "fp32", torch.device("cpu"), "logits", 3, tta="flip")
    x, y = torch.randint(0, 255, (300, 1, 4, 4), dtype=torch.uint8), torch.randint(0, 3, (300,))
    result = ev.score(Small(), x, y)
    assert ev.batch_size == 62 and 0 <= result["accuracy"] <= 1
