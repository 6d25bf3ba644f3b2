"""Train / validation / test splits on the device.

The official test set is kept as it is. The official training set is split into
train and validation by one permutation drawn from ``data.split_seed`` on the CPU
with its own generator, so the split never depends on the device, the run seed or
anything drawn before; ``data.train_limit`` then keeps the first N images of the
(shuffled) train split, leaving validation where it was. ``data.channels`` turns
RGB into grey here, once. All tensors move to the device in one go, as uint8.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional, Union

import torch

from cnnlab.data.common import DataError, RawData, channel_stats, resolve_root
from cnnlab.data.sources import dataset_info
from cnnlab.registry import DATASETS

if TYPE_CHECKING:
    from cnnlab.config import DataConfig

# What a missing setting means when a dict or None stands for a DataConfig (tests check
# that these are DataConfig's own defaults).
DEFAULTS: dict[str, Any] = {
    "name": "mnist", "root": None, "download": True, "val_size": None, "split_seed": 0, "train_limit": None,
    "resize": None, "channels": None, "allow_modified": False,
}  # fmt: skip

DataSettings = Union["DataConfig", dict, None]


def setting(data_cfg: DataSettings, key: str) -> Any:
    """One ``data.*`` setting of a DataConfig, a dict of them, or None (the defaults)."""
    if data_cfg is None:
        return DEFAULTS[key]
    if isinstance(data_cfg, dict):
        return data_cfg.get(key, DEFAULTS[key])
    return getattr(data_cfg, key)


@dataclass
class Splits:
    """Train / validation / test tensors on the device, ready for :mod:`cnnlab.data.batches`.

    ``*_x`` are uint8 ``[N, C, H, W]`` as stored (a grey set stays one channel even with
    ``data.channels=3``: :class:`~cnnlab.augment.Preprocess` repeats it), ``*_y`` int64.
    ``mean``/``std``, ``in_channels`` and ``image_size`` describe what the model sees, i.e.
    after ``data.channels`` and ``data.resize``. ``image_size`` is an int for square
    images, else ``(height, width)``. ``train_index``/``val_index`` (CPU) are the
    positions in the official training set that went into each split, in split order.
    """

    train_x: torch.Tensor
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int
    in_channels: int
    image_size: Union[int, tuple[int, int]]
    source: str
    name: str = ""
    train_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    val_index: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one preprocessed image."""
        s = self.image_size
        h, w = (s, s) if isinstance(s, int) else s
        return (self.in_channels, h, w)


def load_raw(data_cfg: DataSettings = None) -> RawData:
    """The whole data set named by ``data.name``, on the CPU."""
    name = setting(data_cfg, "name")
    return DATASETS.get(name).load(resolve_root(data_cfg), setting(data_cfg, "download"),
                                   allow_modified=setting(data_cfg, "allow_modified"))


def split_indices(
    n: int, val_size: int, split_seed: int, train_limit: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_index, val_index) into ``n`` training images: validation is the first
    ``val_size`` of one seeded permutation (sorted), train the rest in permutation
    order, cut to ``train_limit``."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed))
    val_index = perm[:val_size].sort().values
    train_index = perm[val_size:]
    if train_limit is not None:
        train_index = train_index[:train_limit]
    return train_index, val_index


def to_grey(x: torch.Tensor) -> torch.Tensor:
    """RGB uint8 -> one-channel uint8 luma (rounded), done in chunks to bound memory."""
    out = torch.empty(x.shape[0], 1, *x.shape[2:], dtype=torch.uint8)
    w = torch.tensor([0.2989, 0.587, 0.114]).view(1, 3, 1, 1)
    for i in range(0, len(x), 4096):
        out[i : i + 4096] = (x[i : i + 4096].float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    return out


def load_splits(data_cfg: DataSettings = None, device: Union[str, torch.device] = "cpu") -> Splits:
    """Load ``data.name`` and split the official training set into train and
    validation with a permutation fixed by ``data.split_seed``; the official test
    set is kept as it is. ``data.train_limit`` keeps the first N images of the
    (shuffled) train split. All tensors are moved to ``device`` once, as uint8."""
    name = setting(data_cfg, "name")
    raw = load_raw(data_cfg)
    n = len(raw.train_x)
    val_size = setting(data_cfg, "val_size")
    if val_size is None:
        default = dataset_info(name).default_val_size
        val_size = default if default is not None else n // 10
    if val_size >= n:
        raise DataError(
            f"data.val_size={val_size} leaves no training images: {name} has {n} training images "
            f"({raw.source}). Set data.val_size below {n}."
        )
    seed, limit = setting(data_cfg, "split_seed"), setting(data_cfg, "train_limit")
    train_index, val_index = split_indices(n, val_size, seed, limit)

    train_x, test_x = raw.train_x, raw.test_x
    mean, std = raw.mean, raw.std
    native = train_x.shape[1]
    channels = setting(data_cfg, "channels") or native
    if channels == 1 and native == 3:
        # Converted once here rather than per batch; statistics of the grey images.
        train_x, test_x = to_grey(train_x), to_grey(test_x)
        mean, std = channel_stats(train_x)
    elif channels == 3 and native == 1:
        mean, std = mean * 3, std * 3  # Preprocess repeats the channel
    elif channels != native:
        raise DataError(f"data.channels={channels} cannot be made from {native}-channel images")

    h, w = train_x.shape[-2:]
    resize = setting(data_cfg, "resize")
    image_size: Union[int, tuple[int, int]] = resize if resize else (h if h == w else (h, w))
    dev = torch.device(device)
    return Splits(
        train_x=train_x[train_index].to(dev),
        train_y=raw.train_y[train_index].to(dev),
        val_x=train_x[val_index].to(dev),
        val_y=raw.train_y[val_index].to(dev),
        test_x=test_x.to(dev),
        test_y=raw.test_y.to(dev),
        classes=list(raw.classes),
        mean=tuple(mean),
        std=tuple(std),
        num_classes=len(raw.classes),
        in_channels=channels,
        image_size=image_size,
        source=raw.source,
        name=name,
        train_index=train_index,
        val_index=val_index,
    )
