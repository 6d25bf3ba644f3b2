"""The one device batch iterator: training, evaluation and the data-path benchmark
all draw their batches here.

A training epoch is the slices of one permutation drawn from ``(seed, epoch)`` alone
(on the CPU, with its own generator, then moved to the device once), so resuming
in the middle of an epoch rebuilds exactly the same order and the order never
depends on the device or on anything drawn before. Evaluation walks a split in
consecutive slices. Batches are views/gathers of tensors already on the device
(or, for splits too big for it, gathers on the host copied over by
:class:`~cnnlab.data.placement.HostImages`): no DataLoader, no per-sample Python.
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
    (a compiled step keeps one batch shape). The permutation goes to ``device``, by default where ``x`` is.
    Images kept on the host (:class:`~cnnlab.data.placement.HostImages`) are gathered there by the same
    permutation on the CPU, and the labels by its copy on their device."""
    _check(batch_size)
    if isinstance(x, torch.Tensor):
        perm = epoch_permutation(len(y), seed, epoch, x.device if device is None else device)
        perm_y = perm
    else:
        perm = epoch_permutation(len(y), seed, epoch)
        perm_y = perm.to(y.device)
    end = len(perm) - len(perm) % batch_size if drop_last else len(perm)
    for i in range(start * batch_size, end, batch_size):
        yield x[perm[i : i + batch_size]], y[perm_y[i : i + batch_size]]


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive slices ``(x[i:i+b], y[i:i+b])`` covering the split once, in order."""
    _check(batch_size)
    for i in range(0, len(y), batch_size):
        yield x[i : i + batch_size], y[i : i + batch_size]


def _check(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
