"""Tests for cnnlab.data.sources.imagefolder: image trees written on the fly (pixels,
labels, statistics, grey / palette / alpha images), their decode cache and errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from data_files import make_tree, write_png
from PIL import Image

from cnnlab import data
from cnnlab.data import DataError


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    """A fresh cache directory per test, apart from the data root; yields where decoded caches go."""
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CNNLAB_CACHE", str(folder))
    return folder / "decoded"


def test_imagefolder_loads_pixels_labels_and_stats(tmp_path, cache):
    written = make_tree(tmp_path)
    raw = data.load_imagefolder(tmp_path)
    assert raw.classes == ["ant", "bee", "cat"]
    assert raw.train_x.shape == (7, 3, 8, 6) and raw.test_x.shape == (3, 3, 8, 6)
    expect = np.stack([a for a, _ in written["train"]]).transpose(0, 3, 1, 2)
    assert np.array_equal(raw.train_x.numpy(), expect)  # PNG is lossless
    assert raw.train_y.tolist() == [0, 0, 0, 1, 1, 2, 2] and raw.test_y.tolist() == [0, 2, 2]
    mean = expect.reshape(7, 3, -1).transpose(1, 0, 2).reshape(3, -1) / 255
    assert np.allclose(raw.mean, mean.mean(1), atol=1e-9) and np.allclose(raw.std, mean.std(1), atol=1e-9)
    assert "PNG" in raw.source and str(tmp_path) in raw.source
    # the decoded tensors were cached under the cache directory, atomically (no temp file left)
    assert raw.cache_path is not None and raw.cache_path.parent == cache
    assert not raw.from_cache and [p.name for p in raw.cache_path.parent.iterdir()] == [raw.cache_path.name]
    again = data.load_imagefolder(tmp_path)
    assert again.from_cache and again.cache_path == raw.cache_path
    assert torch.equal(again.train_x, raw.train_x) and again.classes == raw.classes and again.mean == raw.mean


def test_changed_folder_invalidates_the_cache(tmp_path, cache):
    make_tree(tmp_path)
    first = data.load_imagefolder(tmp_path)
    # replace one image by another of the same size and add one: both must show
    new = np.full((8, 6, 3), 7, dtype=np.uint8)
    write_png(tmp_path / "train" / "ant" / "000.png", new)
    os.utime(tmp_path / "train" / "ant" / "000.png", ns=(1, 1))  # a distinct mtime even on coarse clocks
    write_png(tmp_path / "train" / "bee" / "009.png", new)
    second = data.load_imagefolder(tmp_path)
    assert not second.from_cache and second.cache_path != first.cache_path
    assert len(second.train_x) == 8 and (second.train_x[0] == 7).all() and (second.train_x[5] == 7).all()
    assert [p.name for p in cache.iterdir()] == [second.cache_path.name]  # the stale one is gone
    assert data.load_imagefolder(tmp_path).from_cache


def test_imagefolder_grey_palette_and_mixed(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    colour = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "g" / "train" / "a" / "0.png", grey)
    write_png(tmp_path / "g" / "train" / "b" / "0.png", grey)
    write_png(tmp_path / "g" / "test" / "a" / "0.png", grey)
    raw = data.load_imagefolder(tmp_path / "g")
    assert raw.train_x.shape == (2, 1, 5, 5) and np.array_equal(raw.train_x[0, 0].numpy(), grey)
    # a palette PNG must come out as its colours, not its palette indices
    pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    (tmp_path / "m" / "train" / "a").mkdir(parents=True)
    pal.save(tmp_path / "m" / "train" / "a" / "0.png")
    write_png(tmp_path / "m" / "train" / "a" / "1.png", grey)  # grey next to colour -> repeated to 3 channels
    write_png(tmp_path / "m" / "train" / "b" / "0.png", grey)
    write_png(tmp_path / "m" / "test" / "a" / "0.png", colour, mode="RGBA")  # opaque alpha is dropped
    raw = data.load_imagefolder(tmp_path / "m")
    assert raw.train_x.shape == (3, 3, 5, 5)
    assert np.array_equal(raw.train_x[0].permute(1, 2, 0).numpy(), np.asarray(pal.convert("RGB")))
    assert all(np.array_equal(raw.train_x[1, c].numpy(), grey) for c in range(3))
    assert np.array_equal(raw.test_x[0].permute(1, 2, 0).numpy(), colour)


def test_imagefolder_errors(tmp_path, cache):
    with pytest.raises(DataError, match="holds no class folders.*data.root"):
        data.load_imagefolder(tmp_path)
    make_tree(tmp_path / "t")
    (tmp_path / "t" / "train" / "cat" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError) as e:
        data.load_imagefolder(tmp_path / "t")
    assert str(tmp_path / "t" / "train" / "cat" / "001.png") in str(e.value)
    assert "skip_bad_images" in str(e.value)
    make_tree(tmp_path / "s")
    write_png(tmp_path / "s" / "test" / "ant" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(DataError, match="8x6.*9x9|9x9.*8x6"):
        data.load_imagefolder(tmp_path / "s")
    make_tree(tmp_path / "x", counts={"train": {"a": 1, "c": 1}, "test": {"b": 1}})
    with pytest.raises(DataError, match="train/ lacks: b"):
        data.load_imagefolder(tmp_path / "x")
