"""Where and how a run computes: device, seeding, mixed precision, memory format, stop signals.

Small process-level choices shared by training and evaluation, kept out of the loop so it
reads as the method: :func:`pick_device` (``train.device``), :func:`seed_everything`
(``seed``, ``train.deterministic``), :func:`autocast_for` (``train.precision``),
:func:`use_channels_last` (``train.channels_last``) and :func:`stop_on_signals`, which
turns SIGINT/SIGTERM into a flag the training loop checks between steps.
"""
from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from cnnlab.config import ConfigError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        # Needed for bit-reproducible GPU runs (CUBLAS needs this before its first call).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(model: nn.Module, setting: bool | None, precision: str, device: torch.device) -> bool:
    """``train.channels_last``, or when unset: for convolutional nets in mixed precision or on a CPU."""
    if setting is not None:
        return setting
    # On CPU, oneDNN's convs are faster in channels_last even in fp32 (train step, 1 thread, measured in
    # one process: LeNet-5 1.4x, mnist_fast 1.7x, ResNet-20 1.24x, airbench 1.23x; mnist_cnn 0.91x).
    return any(isinstance(m, nn.Conv2d) for m in model.modules()) and (precision != "fp32" or device.type == "cpu")


def identity(x: torch.Tensor, generator=None) -> torch.Tensor:
    """A preprocessing step that does nothing (a head trained on cached features takes them as they are)."""
    return x


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
