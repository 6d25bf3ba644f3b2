"""Tests for cnnlab.data.check (``cnnlab data list|check``) and the data-set facts
each source registers."""
from __future__ import annotations

from dataclasses import FrozenInstanceError

import pytest
from data_files import listing, real_root, write_idx

from cnnlab import data
from cnnlab.data import DataSource
from cnnlab.registry import DATASETS, DatasetInfo, UnknownName


def test_dataset_info_needs_no_files():
    facts = lambda i: (i.num_classes, i.in_channels, i.image_size, i.train_size, i.default_val_size)  # noqa: E731
    assert facts(data.dataset_info("mnist")) == (10, 1, 28, 60000, 10000)
    assert facts(data.dataset_info("fashion_mnist")) == (10, 1, 28, 60000, 10000)
    assert facts(data.dataset_info("cifar10")) == (10, 3, 32, 50000, 5000)
    assert facts(data.dataset_info("imagefolder")) == (None,) * 5
    assert data.dataset_info("cifar10").classes[0] == "airplane" and data.dataset_info("mnist").mean == (0.1307,)
    with pytest.raises(UnknownName, match="known: cifar10, fashion_mnist, imagefolder, mnist"):
        data.dataset_info("svhn")


def test_describe_data_checks_md5s(tmp_path):
    real = {d["name"]: d for d in data.describe_data(real_root())}
    assert real["mnist"]["ok"] and all(f["md5_ok"] for f in real["mnist"]["files"])
    assert real["mnist"]["files"][0]["bytes"] == 47040016
    assert real["fashion_mnist"]["ok"]
    write_idx(tmp_path / "MNIST" / "raw")
    fake = {d["name"]: d for d in data.describe_data(tmp_path)}
    assert fake["mnist"]["present"] and not fake["mnist"]["ok"] and "MD5 mismatch" in fake["mnist"]["message"]
    assert not fake["fashion_mnist"]["present"] and "missing" in fake["fashion_mnist"]["message"]
    assert not fake["cifar10"]["present"] and not fake["imagefolder"]["present"]


def test_each_data_set_is_registered_once_with_its_facts():
    assert list(DATASETS) == ["cifar10", "fashion_mnist", "imagefolder", "mnist"]
    for name in DATASETS:
        entry = DATASETS.get(name)
        assert isinstance(entry, DataSource) and isinstance(entry.info, DatasetInfo) and entry.info.name == name
        assert callable(entry.load) and callable(entry.describe)
    with pytest.raises(FrozenInstanceError):
        DATASETS.get("mnist").info.mean = (0.5,)  # type: ignore[misc]


def test_registered_checksums_are_torchvision_s():
    """The MD5s written into the facts are the ones torchvision checks its downloads against."""
    from torchvision.datasets import CIFAR10, MNIST, FashionMNIST

    assert list(data.dataset_info("cifar10").files) == [
        tuple(f) for f in CIFAR10.train_list + CIFAR10.test_list + [[CIFAR10.meta["filename"], CIFAR10.meta["md5"]]]
    ]
    assert data.dataset_info("mnist").packed_files == tuple(MNIST.resources)
    assert data.dataset_info("fashion_mnist").packed_files == tuple(FashionMNIST.resources)


def test_data_list_reads_no_file_contents_and_writes_nothing(tmp_path):
    write_idx(tmp_path / "MNIST" / "raw")
    before = listing(tmp_path)
    entries = {d["name"]: d for d in data.describe_data(tmp_path, check=False)}
    assert entries["mnist"]["ok"] and entries["mnist"]["message"] == "official files (MD5 not checked)"
    assert all(f["md5"] is None for f in entries["mnist"]["files"])
    assert listing(tmp_path) == before
