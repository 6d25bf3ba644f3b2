"""Tests for cnnlab.data.cache: decoded image folders are cached under the cache
directory ($CNNLAB_CACHE, else ~/.cache/cnnlab), never in the data root."""
from __future__ import annotations

import stat

import torch
from data_files import listing, make_tree

from cnnlab import data, runs
from cnnlab.data import cache


def test_cache_dir_is_the_env_variable_else_home(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    assert data.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("CNNLAB_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.cache_dir() == tmp_path / "home" / ".cache" / "cnnlab"


def test_a_cache_write_leaves_the_data_root_untouched(monkeypatch, tmp_path):
    root, where = tmp_path / "images", tmp_path / "cache"
    make_tree(root)
    monkeypatch.setenv("CNNLAB_CACHE", str(where))
    before = [(p, p.stat().st_mtime_ns) for p in listing(root) for p in [root / p]]
    raw = data.load_imagefolder(root)
    assert raw.cache_path is not None and raw.cache_path.is_file() and not raw.from_cache
    assert raw.cache_path.is_relative_to(where) and not raw.cache_path.is_relative_to(root)
    assert [(p, p.stat().st_mtime_ns) for p in listing(root) for p in [root / p]] == before
    assert data.load_imagefolder(root).from_cache  # and it is used


def test_a_read_only_data_root_is_cached_elsewhere(monkeypatch, tmp_path):
    root = tmp_path / "shared"
    make_tree(root)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        first = data.load_imagefolder(root)
        assert data.load_imagefolder(root).from_cache and first.cache_path.parent == tmp_path / "cache" / "decoded"
    finally:
        for p in [root, *root.rglob("*")]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)


def test_an_unwritable_cache_directory_means_no_cache_not_an_error(monkeypatch, tmp_path):
    root, where = tmp_path / "images", tmp_path / "cache"
    make_tree(root)
    where.mkdir()
    where.chmod(0o555)
    monkeypatch.setenv("CNNLAB_CACHE", str(where))
    try:
        raw = data.load_imagefolder(root)
        assert raw.cache_path is None and not raw.from_cache and len(raw.train_x) == 7
        assert listing(where) == [] and not (root / ".cnnlab-cache").exists()
    finally:
        where.chmod(0o755)


def test_the_cache_name_follows_the_folder_and_its_state(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    a = cache.cache_file("imagefolder", tmp_path / "a", "f" * 64)
    b = cache.cache_file("imagefolder", tmp_path / "b", "f" * 64)
    assert a.parent == b.parent == tmp_path / "c" / "decoded" and a != b
    assert a != cache.cache_file("imagefolder", tmp_path / "a", "e" * 64)
    assert a != cache.cache_file("cifar10", tmp_path / "a", "f" * 64)


def test_a_cache_of_another_state_or_version_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "c"))
    folder, fp = tmp_path / "a", "0" * 64
    assert cache.load_cached("imagefolder", folder, fp)[0] is None
    path = cache.save_cached({"train_x": torch.zeros(2, 1, 3, 3, dtype=torch.uint8)}, "imagefolder", folder, fp)
    assert path is not None and not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    blob, at = cache.load_cached("imagefolder", folder, fp)
    assert at == path and blob["fingerprint"] == fp and blob["version"] == cache.VERSION
    # replaced as cnnlab writes (a new file renamed over it): blob's tensors are memory-mapped from the old one,
    # which writing in place would cut from under them
    runs.save_checkpoint(path, {**blob, "version": cache.VERSION + 1})
    assert cache.load_cached("imagefolder", folder, fp)[0] is None
