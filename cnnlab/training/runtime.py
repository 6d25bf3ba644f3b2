"""Where and how a run computes: device, seeding, mixed precision, memory format, stop signals.

Small process-level choices shared by training and evaluation, kept out of the loop so it
reads as the method: :func:`pick_device` (``train.device``: auto, cpu, cuda, cuda:N),
:func:`visible_gpus` (one per sweep worker), :func:`seed_everything` (``seed``),
:func:`run_flags` (``train.deterministic``'s process-wide flags, set for one run and restored
after it; errors a setting fixes, a nondeterministic op or CUDA out of memory, explained in one
paragraph), :class:`EMA` (``train.ema`` without host syncs), :func:`make_scaler` (fp16),
:func:`plan_compute` (``train.precision`` and ``train.channels_last``, ``auto`` resolved from the device's
facts by :func:`resolve_precision` and :func:`resolve_channels_last`), :func:`autocast_for` and
:func:`stop_on_signals`, which turns SIGINT/SIGTERM into a flag the training loop checks between steps.
"""
from __future__ import annotations

import os
import platform
import signal
import threading
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.optim import swa_utils

from cnnlab.config.schema import ConfigError
from cnnlab.registry import find_info


def pick_device(name: str) -> torch.device:
    """``train.device``: auto | cpu | cuda | cuda:N (N counts the GPUs this process sees)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} was asked for but no CUDA device is available; use auto or cpu")
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        n = torch.cuda.device_count()
        seen = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ConfigError(f"train.device: {name!r} names GPU {device.index}, but this process sees {n} "
                          f"(cuda:0 to cuda:{n - 1}" + (f"; CUDA_VISIBLE_DEVICES={seen}" if seen is not None else "")
                          + "); use auto, cuda or a visible index")
    return device


def visible_gpus() -> tuple[str, ...]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (for giving each sweep worker its own);
    counted without creating a CUDA context (NVML), so spawned workers can still pick theirs."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [d.strip() for d in listed.split(",") if d.strip()] if listed is not None else [str(i) for i in range(n)]
    return tuple(names[:n])


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


# What a run's determinism settings change process-wide (restored by run_flags when the run ends).
NONDETERMINISTIC_FIX = (
    "train.deterministic: true makes PyTorch raise on an operation without a deterministic implementation "
    "on this device, and this run uses one ({op}). Either set train.deterministic: false (results then vary "
    "slightly from run to run on a GPU), or change the network so it avoids that operation (e.g. a fixed-size "
    "pooling instead of adaptive pooling, or a loss other than nll/cross-entropy's backward on CUDA).")


@contextmanager
def run_flags(train_cfg):
    """Set ``train.deterministic``'s process-wide flags for one run and put the caller's back after it,
    so one run's setting never leaks into the next run of a sweep in the same process; errors whose fix
    is a setting (a nondeterministic op, CUDA out of memory) come out as one paragraph naming it."""
    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    try:
        if train_cfg.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic; an error (not a warning) on any op without
            # a deterministic implementation, so `deterministic: true` means what it says.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
        else:
            torch.use_deterministic_algorithms(False)
            torch.backends.cudnn.benchmark = torch.cuda.is_available()  # fixed shapes: let cuDNN pick kernels
            torch.backends.cudnn.deterministic = False
        yield
    except Exception as e:  # noqa: BLE001 - re-raised, explained when a setting is the fix
        known = explain_failure(e, train_cfg)
        if known is None:
            raise
        raise known from e
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


def explain_failure(e: BaseException, train_cfg) -> ConfigError | None:
    """One paragraph naming the setting to change, for the errors a setting fixes; None for the others."""
    text = str(e)
    if isinstance(e, RuntimeError) and "does not have a deterministic implementation" in text:
        op = text.split(" does not have")[0].strip().split("\n")[-1][:120]
        return ConfigError(NONDETERMINISTIC_FIX.format(op=op))
    if isinstance(e, torch.OutOfMemoryError) or (isinstance(e, RuntimeError) and "CUDA out of memory" in text):
        return ConfigError(
            f"the GPU ran out of memory ({' '.join(text.split())[:160]}). Lower what this run keeps on the card: "
            f"train.batch_size (now {train_cfg.batch_size}), train.eval_batch_size (now {train_cfg.eval_batch_size}), "
            "data.resize (smaller images), or use precision bf16/fp16 (now "
            f"{train_cfg.precision}); other processes on the GPU (nvidia-smi) also take memory.")
    return None


def failure_text(e: BaseException, train_cfg) -> str:
    """What summary.json records of a failed run: the explained paragraph when there is one."""
    e = explain_failure(e, train_cfg) or e
    return f"{type(e).__name__}: {e}"


@dataclass(frozen=True)
class DeviceFacts:
    """What the precision and memory-format rules look at, gathered once (:func:`device_facts`) so the
    rules themselves are plain functions a test can call with any machine's facts."""

    kind: str  # torch.device.type: cpu, cuda, mps, ...
    cuda_capability: tuple[int, int] | None = None  # (major, minor) of a CUDA device
    cuda_bf16: bool = False  # torch.cuda.is_bf16_supported() on that device
    cpu_flags: frozenset = frozenset()  # /proc/cpuinfo flags (x86) or features (ARM)
    cpu_capability: str = ""  # torch.backends.cpu.get_cpu_capability(): DEFAULT, AVX2, AVX512, ...


# CPU flags meaning bf16 matrix arithmetic in hardware (x86 AVX-512 BF16 or AMX, ARM's BF16 extension).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


def cpu_flags() -> frozenset:
    """The CPU's flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (what every benchmark prints beside its figures)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def device_facts(device: torch.device) -> DeviceFacts:
    """This process's facts about ``device`` (for :func:`resolve_precision` and :func:`resolve_channels_last`)."""
    if device.type == "cuda":
        return DeviceFacts("cuda", cuda_capability=torch.cuda.get_device_capability(device),
                           cuda_bf16=torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return DeviceFacts("cpu", cpu_flags=cpu_flags(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    return DeviceFacts(device.type)


def native_cpu_bf16(facts: DeviceFacts) -> str | None:
    """The flag (or torch capability) showing the CPU does bf16 in hardware, else None."""
    found = [f for f in NATIVE_BF16_FLAGS if f in facts.cpu_flags]
    cap = facts.cpu_capability.upper()
    return found[0] if found else (cap if "BF16" in cap or "AMX" in cap else None)


# The model families whose training step measured slower in bf16 than in fp32 on a CPU with native bf16
# (benchmarks/bench_precision.py, BENCHMARKS.md "Precision"; Sapphire Rapids, AVX-512 BF16 + AMX, 1 thread,
# channels_last where conv): on them `auto` keeps fp32 there. Value: the measured bf16 speed-up, net, input.
# Every other family measured faster in bf16 (mlp 1.10x, lenet 1.21x, up to airbench 2.47x).
CPU_BF16_SLOWER = {
    "linear": "0.63x (linear, 28 px): one small matmul, the casts cost more than they save",
    "torchvision_zoo": "0.96x (resnet18, 32 px)",
}


def resolve_precision(asked: str, facts: DeviceFacts, family: str | None = None) -> tuple[str, str]:
    """``train.precision`` -> (the precision used, why). ``auto`` takes bf16 autocast where the hardware runs
    it natively (bf16 emulated on a CPU without it is slower than fp32) unless the model's ``family``
    measured slower in bf16 on such a CPU (:data:`CPU_BF16_SLOWER`), fp16 with loss scaling on older GPUs with
    fast fp16 (Volta, Turing: compute capability 7.x), fp32 otherwise; an explicit choice stays."""
    if asked != "auto":
        return asked, "asked for in train.precision"
    if facts.kind == "cuda":
        cap = "{}.{}".format(*facts.cuda_capability) if facts.cuda_capability else "unknown"
        if facts.cuda_bf16 and facts.cuda_capability and facts.cuda_capability >= (8, 0):
            return "bf16", f"auto: CUDA GPU of compute capability {cap} runs bf16 natively"
        if facts.cuda_capability and facts.cuda_capability >= (7, 0):
            return "fp16", f"auto: CUDA GPU of compute capability {cap} has fast fp16 but no bf16 (grad scaler on)"
        return "fp32", f"auto: CUDA GPU of compute capability {cap} has neither bf16 nor fast fp16"
    if facts.kind == "cpu":
        flag = native_cpu_bf16(facts)
        if flag and family in CPU_BF16_SLOWER:
            return "fp32", (f"auto: the CPU runs bf16 natively ({flag}), but {family} nets measured slower in bf16 "
                            f"than in fp32 on such a CPU ({CPU_BF16_SLOWER[family]}; benchmarks/bench_precision.py)")
        if flag:
            return "bf16", f"auto: the CPU runs bf16 natively ({flag})"
        return "fp32", (f"auto: the CPU has no native bf16 (no AVX-512 BF16 or AMX; torch capability "
                        f"{facts.cpu_capability or 'unknown'}), where bf16 is emulated and slower than fp32")
    return "fp32", f"auto: no mixed-precision rule for device kind {facts.kind!r}"


# The (device kind, precision) pairs where conv nets train faster in channels_last. CPU: oneDNN's convolutions,
# measured with benchmarks/bench_channels_last.py (BENCHMARKS.md §12; AVX2 EPYC, fp32, train step, CPU time):
# mnist_fast 1.68x, lenet5 1.18x, resnet20 1.13x, mnist_cnn 0.99x, alexnet_small 0.91x (and airbench 1.23x in
# §3): it wins on most nets and by far the most on the speed-run nets; bf16 pays only with it (ANCHORS.md,
# AVX-512 CPU). GPU: tensor cores want channels_last in bf16 / fp16; fp32 stays NCHW (cuDNN's native layout).
CHANNELS_LAST_FASTER = {"cpu": ("fp32", "bf16"), "cuda": ("bf16", "fp16")}


def resolve_channels_last(setting: bool | None, has_conv: bool, precision: str, kind: str) -> tuple[bool, str]:
    """``train.channels_last`` -> (used, why): an explicit setting stays; unset, a conv net uses channels_last
    where it was measured faster for this device kind and precision (:data:`CHANNELS_LAST_FASTER`)."""
    if setting is not None:
        return setting, "asked for in train.channels_last"
    if not has_conv:
        return False, "auto: the model has no convolutions"
    if precision in CHANNELS_LAST_FASTER.get(kind, ()):
        return True, f"auto: conv nets measured faster in channels_last on {kind} in {precision}"
    return False, f"auto: channels_last not measured faster on {kind} in {precision}"


@dataclass(frozen=True)
class Compute:
    """How a run computes on its device: the resolved precision and memory format, and why."""

    asked: str
    precision: str
    reason: str
    channels_last: bool
    channels_last_reason: str

    def record(self) -> dict:
        """summary.json's ``precision`` and ``channels_last`` entries."""
        return {"precision": {"asked": self.asked, "used": self.precision, "reason": self.reason},
                "channels_last": {"used": self.channels_last, "reason": self.channels_last_reason}}

    def line(self) -> str:
        """The run's start line."""
        return (f"compute: {self.precision} ({self.reason}); channels_last {'on' if self.channels_last else 'off'} "
                f"({self.channels_last_reason})")


def plan_compute(train_cfg, model: nn.Module, device: torch.device) -> Compute:
    """Resolve ``train.precision`` and ``train.channels_last`` for ``model`` (its registry family, when it has
    one) on ``device``."""
    info = find_info(model)
    precision, why = resolve_precision(train_cfg.precision, device_facts(device), info.family if info else None)
    has_conv = any(isinstance(m, nn.Conv2d) for m in model.modules())
    cl, cl_why = resolve_channels_last(train_cfg.channels_last, has_conv, precision, device.type)
    return Compute(train_cfg.precision, precision, why, cl, cl_why)


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


class EMA(swa_utils.AveragedModel):
    """An exponential moving average of a model's weights and buffers (``train.ema``) whose update never
    waits on the device: the copy is built with ``device=`` so its counter ``n_averaged`` lives beside the
    weights, and whether an update copies (the first) or averages is read from a host-side count.
    torch's own ``update_parameters`` reads the counter with ``bool()`` and moves it with a blocking
    ``.to(device)`` each call: host-device syncs every step on a GPU. Same state dict, same numbers."""

    def __init__(self, model: nn.Module, decay: float, device: torch.device):
        super().__init__(model, device=device, multi_avg_fn=swa_utils.get_ema_multi_avg_fn(decay), use_buffers=True)
        self.decay = decay
        self.updates = 0  # host copy of n_averaged

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        mine = [*self.module.parameters(), *self.module.buffers()]
        theirs = [*model.parameters(), *model.buffers()]  # no .detach() (10 ops for LeNet): no_grad already
        if self.updates == 0:
            torch._foreach_copy_(mine, theirs)
        else:
            floats = [(a, b) for a, b in zip(mine, theirs) if a.is_floating_point()]
            torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], 1 - self.decay)
            for a, b in zip(mine, theirs):  # integer buffers (batch norm's step count), as torch does them
                if not a.is_floating_point():
                    a.copy_(a * self.decay + b * (1 - self.decay))
        self.n_averaged += 1
        self.updates += 1

    def load_state_dict(self, state_dict, *args, **kwargs):
        result = super().load_state_dict(state_dict, *args, **kwargs)
        self.updates = int(self.n_averaged)  # once, at resume
        return result


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """fp16 needs loss scaling (its gradients underflow without it), on a GPU and on a CPU alike (where fp16 is
    emulated: slow, but the same numerics, so the tests run that path on any machine). With a fused optimizer
    (optim.build_optimizer's ``fused``: sgd/adam/adamw) the scaler hands the inf check to the optimizer's
    kernel instead of ``.item()``-ing it every step; other optimizers keep that one sync per step."""
    return torch.amp.GradScaler(device.type) if precision == "fp16" and device.type in ("cuda", "cpu") else None


class RunStopped(Exception):
    """Raised inside the loop when a stop signal (SIGINT/SIGTERM) arrived."""


@contextmanager
def stop_on_signals(flag: dict):
    """Turn SIGINT/SIGTERM into ``flag["stop"]`` (the signal's name), checked by the loop between
    steps; a second signal stops at once (KeyboardInterrupt). Main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):  # a second signal: stop at once
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def decide_tf32(setting, precision: str, device_type: str, capability: tuple[int, int] | None) -> bool:
    """``train.tf32`` for a run: TF32 runs fp32 matmuls and convolutions on tensor cores with a 10-bit
    mantissa (about 2-8x faster on Ampere and later, results close to fp32 but not bit-equal). ``auto``
    turns it on for fp32 runs on a CUDA GPU of compute capability >= 8.0 (the first with TF32); true or
    false force it on a GPU (false: strict fp32, even for cuDNN convolutions, which torch allows TF32 by
    default). ``auto`` leaves bf16/fp16 runs at strict fp32 for what autocast keeps in fp32."""
    if device_type != "cuda":
        return False
    if setting != "auto":
        return bool(setting)
    return precision == "fp32" and capability is not None and tuple(capability) >= (8, 0)


@contextmanager
def tf32_flags(train_cfg):
    """Set the TF32 flags (cuBLAS matmul, cuDNN) for one run as :func:`decide_tf32` says and put the
    caller's back after it; yields the decision as summary.json records it."""
    device = pick_device(train_cfg.device)
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    precision, _ = resolve_precision(train_cfg.precision, device_facts(device))  # train.precision auto resolved
    on = decide_tf32(train_cfg.tf32, precision, device.type, capability)
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = on
    try:
        yield {"setting": train_cfg.tf32, "on": on,
               "compute_capability": ".".join(map(str, capability)) if capability else None}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
