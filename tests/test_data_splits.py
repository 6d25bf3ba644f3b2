"""Tests for cnnlab.data.splits: the fixed validation split, train_limit, channels and
resize, the data root and the defaults that stand for a DataConfig."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from data_files import cfg, make_tree, real_root

from cnnlab import data
from cnnlab.data import DataError


def test_split_is_deterministic_disjoint_and_complete():
    root = str(real_root())
    a = data.load_splits(cfg(name="mnist", root=root, split_seed=3))
    b = data.load_splits(cfg(name="mnist", root=root, split_seed=3))
    c = data.load_splits(cfg(name="mnist", root=root, split_seed=4))
    raw = data.load_mnist(Path(root))
    assert len(a.val_index) == 10000 and len(a.train_index) == 50000
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.val_index, b.val_index)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.val_y, b.val_y)
    assert not torch.equal(a.val_index, c.val_index)
    both = torch.cat([a.train_index, a.val_index])
    assert torch.equal(both.sort().values, torch.arange(60000))  # disjoint and nothing lost
    assert torch.equal(a.train_x, raw.train_x[a.train_index]) and torch.equal(a.train_y, raw.train_y[a.train_index])
    assert torch.equal(a.val_x, raw.train_x[a.val_index])
    assert torch.equal(a.test_x, raw.test_x) and torch.equal(a.test_y, raw.test_y)  # test set untouched
    assert a.num_classes == 10 and a.in_channels == 1 and a.image_size == 28 and a.input_shape == (1, 28, 28)
    # the shuffled train split is not in file order (so train_limit takes a mixed subset)
    assert not torch.equal(a.train_index[:100], a.train_index[:100].sort().values)


def test_train_limit_keeps_the_first_n_of_the_train_split():
    root = str(real_root())
    full = data.load_splits(cfg(name="mnist", root=root, val_size=5000))
    small = data.load_splits(cfg(name="mnist", root=root, val_size=5000, train_limit=1000))
    assert len(small.train_x) == 1000 and len(small.train_y) == 1000
    assert torch.equal(small.train_index, full.train_index[:1000])
    assert torch.equal(small.val_index, full.val_index)  # the limit does not move the validation set
    assert len(torch.unique(small.train_y)) == 10  # a shuffled subset has every class


def test_val_size_too_large_names_the_setting():
    with pytest.raises(DataError, match=r"data\.val_size=60000"):
        data.load_splits(cfg(name="mnist", root=str(real_root()), val_size=60000))


def test_channels_and_resize_are_reflected_in_splits():
    s = data.load_splits(cfg(name="fashion_mnist", root=str(real_root()), channels=3, resize=32, train_limit=10))
    assert s.in_channels == 3 and s.image_size == 32 and s.input_shape == (3, 32, 32)
    assert s.train_x.shape[1:] == (1, 28, 28)  # stored as loaded; Preprocess repeats and resizes
    assert s.mean == (0.2860,) * 3 and s.std == (0.3530,) * 3


def test_imagefolder_splits_default_val_and_grey_conversion(tmp_path):
    make_tree(tmp_path, counts={"train": {"a": 12, "b": 9}, "test": {"a": 2, "b": 2}})
    s = data.load_splits(cfg(name="imagefolder", root=str(tmp_path)))
    assert len(s.val_x) == 2 and len(s.train_x) == 19  # 10 % of 21, rounded down
    assert s.num_classes == 2 and s.in_channels == 3 and s.image_size == (8, 6) and s.input_shape == (3, 8, 6)
    g = data.load_splits(cfg(name="imagefolder", root=str(tmp_path), channels=1))
    assert g.in_channels == 1 and g.train_x.shape[1] == 1 and len(g.mean) == 1
    rgb = s.train_x[0].float()
    luma = (0.2989 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).round()
    assert torch.equal(g.train_x[0, 0].float(), luma)
    assert abs(g.mean[0] - g.train_x.float().mean().item() / 255) < 0.05  # stats from the whole train set


def test_resolve_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_root(cfg(root=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert data.resolve_root(cfg()) == tmp_path / "env"
    monkeypatch.delenv("CNNLAB_DATA")
    assert data.resolve_root(cfg()) == tmp_path / "home" / ".cache" / "cnnlab"


def test_defaults_for_a_dict_or_none_are_data_config_s():
    """load_splits takes a DataConfig, a dict or None without importing cnnlab.config.schema:
    the defaults it uses then must be DataConfig's own."""
    from cnnlab.config.schema import DataConfig
    from cnnlab.data.splits import DEFAULTS, setting

    assert DEFAULTS == {k: getattr(DataConfig(), k) for k in DEFAULTS}
    assert setting({"name": "cifar10"}, "name") == "cifar10" and setting({}, "split_seed") == 0
    assert setting(None, "download") is True and setting(cfg(train_limit=7), "train_limit") == 7


def test_a_dict_gives_the_same_split_as_a_data_config():
    root = str(real_root())
    a = data.load_splits({"name": "mnist", "root": root, "download": False, "train_limit": 50}, "cpu")
    b = data.load_splits(cfg(name="mnist", root=root, train_limit=50))
    assert torch.equal(a.train_index, b.train_index) and torch.equal(a.val_x, b.val_x) and a.mean == b.mean


def test_importing_cnnlab_data_does_not_import_config():
    import subprocess
    import sys

    code = "import sys, cnnlab.data, cnnlab.data.augment; print('cnnlab.config.schema' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
