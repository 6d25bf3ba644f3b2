"""Tests for cnnlab.data.sources.cifar10: the official python batches and the
image-folder export (a tiny one written on the fly, and the real JPEG copy)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from data_files import cfg, make_tree, real_root

from cnnlab import data
from cnnlab.data import DataError
from cnnlab.data.common import channel_stats
from cnnlab.data.sources import cifar10


def test_cifar10_export_detected_in_a_tiny_tree(tmp_path):
    counts = {"train": {c: 2 for c in cifar10.CLASSES}, "test": {c: 1 for c in cifar10.CLASSES}}
    make_tree(tmp_path / "cifar10", counts=counts, size=(32, 32))
    raw = data.load_cifar10(tmp_path)
    assert raw.classes == cifar10.CLASSES and raw.train_x.shape == (20, 3, 32, 32)
    assert raw.source.startswith("image-folder export (PNG) at ") and raw.mean == (0.4914, 0.4822, 0.4465)
    assert raw.train_y.tolist() == [i // 2 for i in range(20)]


def test_cifar10_missing_and_wrong_export(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_cifar10(tmp_path, download=True)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar10-jpg" in msg and "download" in msg and "\n" not in msg
    counts = {"train": {c: 1 for c in cifar10.CLASSES}, "test": {"cat": 1}}
    make_tree(tmp_path / "cifar10", counts=counts, size=(16, 16))
    with pytest.raises(DataError, match="expected 32x32 RGB"):
        data.load_cifar10(tmp_path)


@pytest.mark.slow
def test_cifar10_jpeg_export_loads_and_is_cached():
    root = real_root()
    if not (root / "cifar10-jpg").is_dir():
        pytest.skip("no cifar10-jpg export in the data root")
    raw = data.load_cifar10(root)
    assert raw.train_x.shape == (50000, 3, 32, 32) and raw.test_x.shape == (10000, 3, 32, 32)
    assert torch.bincount(raw.train_y).tolist() == [5000] * 10 and torch.bincount(raw.test_y).tolist() == [1000] * 10
    assert raw.classes == cifar10.CLASSES
    assert raw.source == f"image-folder export (JPEG, lossy) at {root / 'cifar10-jpg'}"
    # the decoded pixels give the statistics measured with Pillow for this copy
    m, s = channel_stats(raw.train_x)
    assert np.allclose(m, (0.4913, 0.4821, 0.4465), atol=2e-4) and np.allclose(s, (0.2452, 0.2428, 0.2606), atol=2e-4)
    assert not (root / ".cnnlab-cache").exists()  # caches go under the cache directory, never the data root
    assert raw.cache_path is not None and raw.cache_path.parent == data.cache_dir() / "decoded"
    again = data.load_cifar10(root)
    assert again.from_cache and torch.equal(again.test_x, raw.test_x)
    splits = data.load_splits(cfg(name="cifar10", root=str(root)))
    assert len(splits.val_x) == 5000 and len(splits.train_x) == 45000


def test_corrupt_official_cifar_batches_are_named(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name, _ in cifar10.CIFAR10.files:
        if name != "test_batch":  # one file missing, the rest present but not the official bytes
            (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        data.load_cifar10(tmp_path)
    msg = str(e.value)
    assert "data_batch_1, data_batch_2" in msg and "fail the MD5 check" in msg
    assert "test_batch is missing" in msg and "data.download=true" in msg and "\n" not in msg
