"""Where a run keeps its images: on the device, in pinned host memory, or streamed from disk.

:func:`load_splits <cnnlab.data.splits.load_splits>` decides once, when it loads, by comparing
the splits' size as uint8 with ``data.max_memory`` and the free memory (:func:`choose_placement`,
a plain function of the figures so it can be tested with any machine's):

- ``device``: the splits fit where training runs and go there as uint8 tensors (the usual case);
- ``pinned host memory`` (GPU only): too big for the GPU's free memory but fine in RAM: the splits
  stay in page-locked host memory and each batch is copied to the GPU with ``non_blocking=True``;
- ``streamed from <file>``: bigger than ``data.max_memory``: the splits stay memory-mapped from the
  decoded uint8 cache file under the cache directory (never the data root) and each batch is
  gathered from the map and copied to the device.

The last two are :class:`HostImages`, which :func:`~cnnlab.data.batches.train_batches`,
:func:`~cnnlab.data.batches.eval_batches` and everything that indexes a split use like a tensor:
a batch is the same uint8 images in the same order, so a streamed run trains exactly as an
in-memory one (same permutation, same augmentation, same metrics).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional, Union

import torch

from cnnlab.data.cache import cache_dir, mapped_copy
from cnnlab.data.common import DataError, RawData, channel_histograms, stats_of_histograms, to_grey

# "auto": the stored splits may take at most this share of the free memory. The rest is for the weights,
# optimizer state and activations on a GPU, and for everything else the machine runs on a CPU.
SHARE = 0.5
DEVICE, PINNED, STREAM = "device", "pinned", "stream"
STATS_CHUNK = 4096  # images per read when a streamed split's statistics are counted


def choose_placement(nbytes: int, device_type: str, device_free: Optional[int], host_free: Optional[int],
                     max_memory: Union[str, int] = "auto") -> str:
    """Where ``nbytes`` of uint8 images go: ``"device"``, ``"pinned"`` (GPU only) or ``"stream"``.

    ``device_free``: free bytes on a CUDA device (None when unknown or not a GPU); ``host_free``:
    available RAM (None when unknown). ``max_memory``: the data set's budget in bytes, or ``"auto"``
    for :data:`SHARE` of the free memory where training keeps the data. An explicit budget is the
    user's decision on a CPU; on a GPU it is also capped by what the GPU has free."""
    explicit = None if max_memory == "auto" else int(max_memory)
    host_budget = explicit if explicit is not None else (SHARE * host_free if host_free is not None else math.inf)
    if device_type != "cuda":  # the host's memory is the device's (CPU, and Apple's unified memory)
        return DEVICE if nbytes <= host_budget else STREAM
    gpu_budget = SHARE * device_free if device_free is not None else math.inf
    if explicit is not None:
        gpu_budget = min(explicit, device_free if device_free is not None else math.inf)
    if nbytes <= gpu_budget:
        return DEVICE
    return PINNED if nbytes <= host_budget else STREAM


def host_available() -> Optional[int]:
    """Bytes of RAM available to new allocations (``MemAvailable``, which counts reclaimable page
    cache), else the free physical pages; None when neither can be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_available(device: Union[str, torch.device]) -> Optional[int]:
    """Free bytes on a CUDA ``device`` (``torch.cuda.mem_get_info``); None for other devices."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return torch.cuda.mem_get_info(device)[0]


def decide(nbytes: int, device: torch.device, max_memory: Union[str, int]) -> str:
    """:func:`choose_placement` with this machine's free memory."""
    return choose_placement(nbytes, device.type, device_available(device), host_available(), max_memory)


def mapped_images(raw: RawData, label: str) -> tuple[dict[str, torch.Tensor], Path]:
    """The raw set's image tensors (``train_x``, ``test_x``, ``val_x``) memory-mapped from a file
    under the cache directory: its decoded cache when it has one, else a copy written there once."""
    names = [n for n in ("train_x", "test_x", "val_x") if getattr(raw, n) is not None]
    if raw.mapped and raw.cache_path is not None:
        return {n: getattr(raw, n) for n in names}, raw.cache_path
    blob, path = mapped_copy({n: getattr(raw, n) for n in names}, label)
    if blob is None:
        raise DataError(
            f"the {label} images do not fit in data.max_memory, so cnnlab would stream them from a copy on "
            f"disk, but the cache directory {cache_dir()} cannot be written ({path} could not be made). Point "
            f"$CNNLAB_CACHE at a writable folder with room for them, or raise data.max_memory.")
    return blob, path


class HostImages:
    """A split's uint8 ``[N, C, H, W]`` images kept on the host (pinned, or memory-mapped from a
    file) that hand out batches on ``device``: ``x[i:j]`` and ``x[positions]`` are device tensors,
    as they would be of a split stored there.

    ``base`` holds the images, ``rows`` (None: all of them, in order) the positions in ``base``
    that make up the split; ``grey`` turns RGB into one channel per batch (``data.channels=1``),
    exactly as :func:`~cnnlab.data.common.to_grey` turns a whole split. Gathers read ``base`` in
    ascending order (a memory map front to back) and return the images in the order asked."""

    dtype = torch.uint8

    def __init__(self, base: torch.Tensor, rows: Optional[torch.Tensor], device: Union[str, torch.device],
                 grey: bool = False):
        self.base, self.rows, self.grey = base, rows, grey
        self.device = torch.device(device)
        n = len(base) if rows is None else len(rows)
        self.shape = torch.Size((n, 1 if grey else base.shape[1], *base.shape[2:]))

    def __len__(self) -> int:
        return self.shape[0]

    def numel(self) -> int:
        return math.prod(self.shape)

    def element_size(self) -> int:
        return 1

    def host(self, key: Union[slice, torch.Tensor, list]) -> torch.Tensor:
        """Images ``key`` (a slice, or positions in the split) as a CPU uint8 tensor, in ``key``'s order."""
        if isinstance(key, slice) and self.rows is None:
            batch = self.base[key]  # one contiguous read
        else:
            if isinstance(key, slice):
                rows = self.rows[key]
            else:
                idx = torch.as_tensor(key, dtype=torch.int64).cpu()
                rows = idx if self.rows is None else self.rows[idx]
            ascending, order = rows.sort()
            batch = self.base.index_select(0, ascending)
            if len(order) > 1 and not bool((order[1:] > order[:-1]).all()):
                batch = batch.index_select(0, order.argsort())  # back to the order asked for
        return to_grey(batch) if self.grey else batch

    def __getitem__(self, key: Union[slice, torch.Tensor, list]) -> torch.Tensor:
        batch = self.host(key)
        if self.device.type == "cpu":
            return batch
        if self.device.type == "cuda":  # page-locked, so the copy runs while the host goes on
            staged = torch.empty(batch.shape, dtype=batch.dtype, pin_memory=True)
            staged.copy_(batch)
            return staged.to(self.device, non_blocking=True)
        return batch.to(self.device)

    def __repr__(self) -> str:
        return f"HostImages(shape={tuple(self.shape)}, device={self.device}, grey={self.grey})"


def host_stats(images: HostImages) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of a host-kept split, counted in chunks (never all in memory at once)."""
    hists = torch.zeros(images.shape[1], 256, dtype=torch.int64)
    for i in range(0, len(images), STATS_CHUNK):
        hists += channel_histograms(images.host(slice(i, i + STATS_CHUNK)))
    return stats_of_histograms(hists) if len(images) else ((0.0,) * images.shape[1], (1.0,) * images.shape[1])
