"""The one device batch iterator: training, evaluation and the data-path benchmark
all draw their batches here.

A training epoch is the slices of one permutation drawn from ``(seed, epoch)`` alone
(on the CPU, with its own generator, then moved to the device once), so resuming
in the middle of an epoch rebuilds exactly the same order and the order never
depends on the device or on anything drawn before. Evaluation walks a split in
consecutive slices. Batches are views/gathers of tensors already on the device:
no DataLoader, no per-sample Python.
"""
from __future__ import annotations

from typing import Iterator, Union

import torch

Device = Union[str, torch.device, None]


def epoch_permutation(n: int, seed: int, epoch: int, device: Device = None) -> torch.Tensor:
    """The order of the ``n`` training images in ``epoch`` of a run with ``seed``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm.to(device) if device is not None else perm


def train_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int, start: int = 0, device: Device = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x[idx], y[idx])`` for the slices ``idx`` of :func:`epoch_permutation`, from
    batch index ``start`` (to resume mid-epoch); the last short batch is kept unless ``drop_last``
    (a compiled step keeps one batch shape). The permutation goes to ``device``, by default where ``x`` is."""
    _check(batch_size)
    perm = epoch_permutation(len(y), seed, epoch, x.device if device is None else device)
    end = len(perm) - len(perm) % batch_size if drop_last else len(perm)
    for i in range(start * batch_size, end, batch_size):
        idx = perm[i : i + batch_size]
        yield x[idx], y[idx]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive slices ``(x[i:i+b], y[i:i+b])`` covering the split once, in order."""
    _check(batch_size)
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


# The stored splits may take at most this share of the device's free memory: the rest is for the
# weights, optimizer state and activations (a 224-px ResNet's activations dwarf MNIST's images).
DEVICE_SHARE = 0.5


def free_memory(device: Device) -> int | None:
    """Free bytes on ``device`` (``torch.cuda.mem_get_info``); None where it is not measured (CPU)."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def fits_on_device(nbytes: int, device: Device) -> bool:
    """Whether ``nbytes`` of stored images may go to ``device`` (always on a CPU)."""
    free = free_memory(device)
    return free is None or nbytes <= DEVICE_SHARE * free


def _check(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
