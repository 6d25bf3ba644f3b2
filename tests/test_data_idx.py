"""Tests for cnnlab.data.sources.idx: the real MNIST / Fashion-MNIST copies, tiny IDX
files written on the fly, and the errors for missing or corrupt files."""
from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import cfg, real_root, write_idx

from cnnlab import data
from cnnlab.data import DataError


MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_mnist_matches_the_published_figures():
    raw = data.load_mnist(real_root(), download=False)
    assert raw.train_x.shape == (60000, 1, 28, 28) and raw.train_x.dtype == torch.uint8
    assert raw.test_x.shape == (10000, 1, 28, 28)
    assert raw.train_y.dtype == torch.int64
    assert torch.bincount(raw.train_y).tolist() == MNIST_TRAIN_COUNTS
    assert torch.bincount(raw.test_y).tolist() == MNIST_TEST_COUNTS
    assert raw.train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert raw.test_y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert raw.classes == [str(i) for i in range(10)]
    assert raw.mean == (0.1307,) and raw.std == (0.3081,)
    assert "official" in raw.source and "MNIST/raw" in raw.source
    # the published train mean/std are what the pixels give
    x = raw.train_x.float() / 255
    assert abs(x.mean().item() - 0.1307) < 5e-4 and abs(x.std().item() - 0.3081) < 5e-4


def test_fashion_mnist_matches_the_published_figures():
    raw = data.load_fashion_mnist(real_root(), download=False)
    assert torch.bincount(raw.train_y).tolist() == [6000] * 10
    assert torch.bincount(raw.test_y).tolist() == [1000] * 10
    assert raw.train_y[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert raw.test_y[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert raw.classes[0] == "T-shirt/top" and raw.classes[9] == "Ankle boot" and len(raw.classes) == 10
    assert raw.mean == (0.2860,) and raw.std == (0.3530,)


# --------------------------------------------------------------------------- missing / corrupt IDX files


def test_missing_mnist_explains_where_it_looked(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_splits(cfg(name="mnist", root=str(tmp_path)))
    msg = str(e.value)
    assert str(tmp_path / "MNIST" / "raw") in msg
    assert "train-images-idx3-ubyte" in msg and "t10k-labels-idx1-ubyte" in msg
    assert "data.root" in msg and "CNNLAB_DATA" in msg and "download" in msg
    assert "\n" not in msg  # one paragraph
    assert list(tmp_path.iterdir()) == []


def test_failed_download_is_reported_and_leaves_nothing(tmp_path):
    # No internet here: torchvision's download fails at once. With internet this
    # would download MNIST (about 12 MB), so only run it where it must fail.
    root = tmp_path / "fresh"
    try:
        raw = data.load_mnist(root, download=True)
    except DataError as e:
        assert "download failed" in str(e) and str(root / "MNIST" / "raw") in str(e)
        assert not root.exists()  # the folders the attempt made are gone again
    else:  # pragma: no cover - a machine with internet
        assert len(raw.train_x) == 60000


@pytest.mark.parametrize("gz", [False, True])
def test_tiny_idx_files_load_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path / "MNIST" / "raw", gz=gz)
    with pytest.raises(DataError, match="not the official file.*allow_modified"):  # not MNIST's own files
        data.load_mnist(tmp_path)
    raw = data.load_mnist(tmp_path, allow_modified=True)
    assert raw.source.startswith("modified IDX files")
    assert np.array_equal(raw.train_x[:, 0].numpy(), arrays["train"][0])
    assert np.array_equal(raw.train_y.numpy(), arrays["train"][1])
    assert np.array_equal(raw.test_x[:, 0].numpy(), arrays["t10k"][0])


def _corrupt(path: Path, how: str) -> None:
    blob = path.read_bytes()
    if how == "magic":
        path.write_bytes(struct.pack(">I", 0x0803 if "labels" in path.name else 0x0801) + blob[4:])
    elif how == "truncated":
        path.write_bytes(blob[:-7])
    elif how == "header":
        path.write_bytes(blob[:5])


@pytest.mark.parametrize(
    "fname,how,expect",
    [
        ("train-images-idx3-ubyte", "magic", "magic number 0x00000801, expected 0x00000803"),
        ("t10k-labels-idx1-ubyte", "magic", "magic number 0x00000803, expected 0x00000801"),
        ("train-images-idx3-ubyte", "truncated", "is truncated"),
        ("train-labels-idx1-ubyte", "header", "shorter than the 8-byte IDX header"),
    ],
)
def test_corrupt_idx_raises_naming_the_file(tmp_path, fname, how, expect):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx(raw_dir)
    _corrupt(raw_dir / fname, how)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as e:
        data.load_splits(cfg(name="mnist", root=str(tmp_path), val_size=1))
    assert str(raw_dir / fname) in str(e.value) and expect in str(e.value)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # no cache, no temp file


def test_idx_count_mismatch_and_bad_labels(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_idx(raw_dir)
    (raw_dir / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 4) + bytes([1, 2, 3, 4]))
    with pytest.raises(DataError, match="holds 5 images but .* holds 4 labels"):
        data.load_mnist(tmp_path)
    (raw_dir / "train-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, 5) + bytes([1, 2, 3, 4, 12]))
    with pytest.raises(DataError, match="label 12"):
        data.load_mnist(tmp_path)
