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

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator, Union

import torch

Device = Union[str, torch.device, None]


def epoch_permutation(n: int, seed: int, epoch: int, device: Device = None) -> torch.Tensor:
    """The order of the ``n`` training images in ``epoch`` of a run with ``seed``."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    perm = torch.randperm(n, generator=g)
    return perm.to(device) if device is not None else perm


def balanced_draw(y: torch.Tensor, seed: int, epoch: int, device: Device = None) -> torch.Tensor:
    """``data.sampler: balanced``: ``len(y)`` indices drawn with replacement, each image with probability
    proportional to 1 / (its class's count), so every class present is drawn about equally often. Drawn on the
    CPU from ``(seed, epoch)`` alone, like :func:`epoch_permutation`: a resumed epoch draws the same."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    labels = y.long().cpu()
    counts = torch.bincount(labels)
    idx = torch.multinomial(1.0 / counts[labels].double(), len(labels), replacement=True, generator=g)
    return idx.to(device) if device is not None else idx


def epoch_order(y: torch.Tensor, seed: int, epoch: int, sampler: str = "shuffle", device: Device = None) -> torch.Tensor:
    """The indices of ``epoch``'s training images in order: a permutation (``shuffle``) or a class-balanced
    draw with replacement (``balanced``)."""
    if sampler == "balanced":
        return balanced_draw(y, seed, epoch, device)
    return epoch_permutation(len(y), seed, epoch, device)


def train_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int, start: int = 0, device: Device = None,
    drop_last: bool = False, sampler: str = "shuffle",
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x[idx], y[idx])`` for the slices ``idx`` of :func:`epoch_order` (``sampler``), from
    batch index ``start`` (to resume mid-epoch); the last short batch is kept unless ``drop_last``
    (a compiled step keeps one batch shape). The order goes to ``device``, by default where ``x`` is.
    Images kept on the host (:class:`~cnnlab.data.placement.HostImages`) are gathered there by the same
    order on the CPU, and the labels by its copy on their device."""
    _check(batch_size)
    end = len(y) - len(y) % batch_size if drop_last else len(y)
    starts = range(start * batch_size, end, batch_size)
    if isinstance(x, torch.Tensor):
        perm = epoch_order(y, seed, epoch, sampler, x.device if device is None else device)
        for i in starts:  # index_select copies whole images; x[idx] went element by element (5x slower on CPU)
            idx = perm[i : i + batch_size]
            yield x.index_select(0, idx), y.index_select(0, idx)
        return
    perm = epoch_order(y, seed, epoch, sampler)
    perm_y = perm.to(y.device)
    batches = _gathered_ahead(x, [perm[i : i + batch_size] for i in starts])
    for i, xb in zip(starts, batches):
        yield xb, y.index_select(0, perm_y[i : i + batch_size])


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive slices ``(x[i:i+b], y[i:i+b])`` covering the split once, in order."""
    _check(batch_size)
    starts = range(0, len(y), batch_size)
    xs = (x[i : i + batch_size] for i in starts) if isinstance(x, torch.Tensor) else \
        _gathered_ahead(x, [slice(i, i + batch_size) for i in starts])
    for i, xb in zip(starts, xs):
        yield xb, y[i : i + batch_size]


def _gathered_ahead(x, keys: list) -> Iterator[torch.Tensor]:
    """``x[key]`` for each key of host-kept images, the next batch gathered in a thread while the caller
    works on this one (reads from a memory map, and the copy to the device, overlap the step)."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cnnlab-batches") as pool:
        ahead = pool.submit(x.__getitem__, keys[0]) if keys else None
        for k in range(len(keys)):
            batch = ahead.result()
            ahead = pool.submit(x.__getitem__, keys[k + 1]) if k + 1 < len(keys) else None
            yield batch


def _check(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
