"""Data sets as whole uint8 tensors on the device: read, split and batched.

Each data set (MNIST, Fashion-MNIST, CIFAR-10, any ``train/<class>/`` +
``test/<class>/`` image folder) is read once by its source module
(:mod:`cnnlab.data.sources`) into a :class:`RawData`, split deterministically into
train / validation / test (:func:`load_splits`, :mod:`cnnlab.data.splits`) and
moved to the device in one go (or, when they do not fit, kept in pinned host memory
or streamed from the cache on disk: :mod:`cnnlab.data.placement`). Training and evaluation then take batches from
:mod:`cnnlab.data.batches` and turn them into normalised float input with
:class:`cnnlab.data.augment.Preprocess`. Decoded image folders are cached under the
cache directory (:mod:`cnnlab.data.cache`), never in the data root;
``cnnlab data list|check`` is :func:`describe_data` (:mod:`cnnlab.data.check`).
Anything missing or broken raises :class:`DataError`, whose message says which
files, where they were looked for and how to provide them.
"""
from __future__ import annotations

from cnnlab.data.batches import epoch_permutation, eval_batches, train_batches
from cnnlab.data.cache import cache_dir
from cnnlab.data.check import describe_data
from cnnlab.data.common import DataError, DataSource, RawData, resolve_root
from cnnlab.data.sources import dataset_info
from cnnlab.data.sources.cifar10 import load_cifar10
from cnnlab.data.sources.idx import load_fashion_mnist, load_mnist
from cnnlab.data.sources.imagefolder import load_imagefolder
from cnnlab.data.splits import Splits, check_preprocessing, check_record, load_raw, load_splits, read_record
from cnnlab.registry import DatasetInfo

__all__ = [
    "DataError", "DataSource", "DatasetInfo", "RawData", "Splits", "cache_dir", "check_preprocessing", "check_record",
    "dataset_info", "describe_data", "read_record",
    "epoch_permutation", "eval_batches", "load_cifar10", "load_fashion_mnist", "load_imagefolder", "load_mnist",
    "load_raw", "load_splits", "resolve_root", "train_batches",
]  # fmt: skip
