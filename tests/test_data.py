"""Tests for cnnlab.data: the real MNIST / Fashion-MNIST / CIFAR-10 copies, splits,
batches, preprocessing, image folders written on the fly, decode caches and the
errors for missing or corrupt files."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import data
from cnnlab.config import ConfigError, DataConfig
from cnnlab.data import DataError
from cnnlab.registry import UnknownName


def real_root() -> Path:
    """The shared data sets: $CNNLAB_DATA, else shared/datasets beside the repo."""
    env = os.environ.get("CNNLAB_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[2] / "shared" / "datasets", Path("/work/shared/datasets")]
    for c in candidates:
        if (c / "MNIST" / "raw").is_dir():
            return c
    pytest.skip(f"no real data sets found (looked in {', '.join(map(str, candidates))}); set CNNLAB_DATA")


def cfg(**kw) -> DataConfig:
    kw.setdefault("download", False)
    return DataConfig(**kw)


# --------------------------------------------------------------------------- real MNIST / Fashion-MNIST

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


# --------------------------------------------------------------------------- splits


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


def write_idx(folder: Path, n_train=5, n_test=3, size=28, gz=False, seed=0) -> dict[str, np.ndarray]:
    """A tiny but valid MNIST raw folder; returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        x = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        y = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[prefix] = (x, y)
        blobs = {
            f"{prefix}-images-idx3-ubyte": struct.pack(">IIII", 0x803, n, size, size) + x.tobytes(),
            f"{prefix}-labels-idx1-ubyte": struct.pack(">II", 0x801, n) + y.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                (folder / (name + ".gz")).write_bytes(gzip.compress(blob))
            else:
                (folder / name).write_bytes(blob)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_tiny_idx_files_load_exactly(tmp_path, gz):
    arrays = write_idx(tmp_path / "MNIST" / "raw", gz=gz)
    raw = data.load_mnist(tmp_path)
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


# --------------------------------------------------------------------------- image folders


def write_png(path: Path, arr: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(arr)
    if mode:
        img = img.convert(mode)
    img.save(path)


def make_tree(root: Path, counts=None, size=(8, 6), seed=0) -> dict[str, list[tuple[np.ndarray, str]]]:
    """train/ and test/ class folders of random RGB PNGs; returns what was written, in file order."""
    counts = counts or {"train": {"ant": 3, "bee": 2, "cat": 2}, "test": {"ant": 1, "cat": 2}}
    rng = np.random.default_rng(seed)
    written: dict[str, list[tuple[np.ndarray, str]]] = {}
    for split, per_class in counts.items():
        written[split] = []
        for cls in sorted(per_class):
            for i in range(per_class[cls]):
                arr = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                write_png(root / split / cls / f"{i:03d}.png", arr)
                written[split].append((arr, cls))
    return written


def test_imagefolder_loads_pixels_labels_and_stats(tmp_path):
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
    # the decoded tensors were cached under the root, atomically (no temp file left)
    assert raw.cache_path is not None and raw.cache_path.parent == tmp_path / ".cnnlab-cache"
    assert not raw.from_cache and [p.name for p in raw.cache_path.parent.iterdir()] == [raw.cache_path.name]
    again = data.load_imagefolder(tmp_path)
    assert again.from_cache and again.cache_path == raw.cache_path
    assert torch.equal(again.train_x, raw.train_x) and again.classes == raw.classes and again.mean == raw.mean


def test_changed_folder_invalidates_the_cache(tmp_path):
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
    cache_dir = tmp_path / ".cnnlab-cache"
    assert [p.name for p in cache_dir.iterdir()] == [second.cache_path.name]  # the stale one is gone
    assert data.load_imagefolder(tmp_path).from_cache


def test_imagefolder_grey_palette_and_mixed(tmp_path):
    rng = np.random.default_rng(1)
    grey = rng.integers(0, 256, (5, 5), dtype=np.uint8)
    colour = rng.integers(0, 256, (5, 5, 3), dtype=np.uint8)
    write_png(tmp_path / "g" / "train" / "a" / "0.png", grey)
    write_png(tmp_path / "g" / "test" / "a" / "0.png", grey)
    raw = data.load_imagefolder(tmp_path / "g")
    assert raw.train_x.shape == (1, 1, 5, 5) and np.array_equal(raw.train_x[0, 0].numpy(), grey)
    # a palette PNG must come out as its colours, not its palette indices
    pal = Image.fromarray(colour).convert("P", palette=Image.Palette.ADAPTIVE, colors=6)
    (tmp_path / "m" / "train" / "a").mkdir(parents=True)
    pal.save(tmp_path / "m" / "train" / "a" / "0.png")
    write_png(tmp_path / "m" / "train" / "a" / "1.png", grey)  # grey next to colour -> repeated to 3 channels
    write_png(tmp_path / "m" / "test" / "a" / "0.png", colour, mode="RGBA")  # alpha is dropped
    raw = data.load_imagefolder(tmp_path / "m")
    assert raw.train_x.shape == (2, 3, 5, 5)
    assert np.array_equal(raw.train_x[0].permute(1, 2, 0).numpy(), np.asarray(pal.convert("RGB")))
    assert all(np.array_equal(raw.train_x[1, c].numpy(), grey) for c in range(3))
    assert np.array_equal(raw.test_x[0].permute(1, 2, 0).numpy(), colour)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="has no train/ folder.*data.root"):
        data.load_imagefolder(tmp_path)
    make_tree(tmp_path / "t")
    (tmp_path / "t" / "train" / "cat" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(DataError) as e:
        data.load_imagefolder(tmp_path / "t")
    assert str(tmp_path / "t" / "train" / "cat" / "001.png") in str(e.value)
    assert not (tmp_path / "t" / ".cnnlab-cache").exists() or not any((tmp_path / "t" / ".cnnlab-cache").iterdir())
    make_tree(tmp_path / "s")
    write_png(tmp_path / "s" / "test" / "ant" / "big.png", np.zeros((9, 9, 3), np.uint8))
    with pytest.raises(DataError, match="8x6.*9x9|9x9.*8x6"):
        data.load_imagefolder(tmp_path / "s")
    make_tree(tmp_path / "x", counts={"train": {"a": 1}, "test": {"b": 1}})
    with pytest.raises(DataError, match="train/ lacks: b"):
        data.load_imagefolder(tmp_path / "x")


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


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar10_export_detected_in_a_tiny_tree(tmp_path):
    counts = {"train": {c: 2 for c in data.CIFAR10_CLASSES}, "test": {c: 1 for c in data.CIFAR10_CLASSES}}
    make_tree(tmp_path / "cifar10", counts=counts, size=(32, 32))
    raw = data.load_cifar10(tmp_path)
    assert raw.classes == data.CIFAR10_CLASSES and raw.train_x.shape == (20, 3, 32, 32)
    assert raw.source.startswith("image-folder export (PNG) at ") and raw.mean == (0.4914, 0.4822, 0.4465)
    assert raw.train_y.tolist() == [i // 2 for i in range(20)]


def test_cifar10_missing_and_wrong_export(tmp_path):
    with pytest.raises(DataError) as e:
        data.load_cifar10(tmp_path, download=True)
    msg = str(e.value)
    assert "cifar-10-batches-py" in msg and "cifar10-jpg" in msg and "download" in msg and "\n" not in msg
    counts = {"train": {c: 1 for c in data.CIFAR10_CLASSES}, "test": {"cat": 1}}
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
    assert raw.classes == data.CIFAR10_CLASSES
    assert raw.source == f"image-folder export (JPEG, lossy) at {root / 'cifar10-jpg'}"
    # the decoded pixels give the statistics measured with Pillow for this copy
    m, s = data._channel_stats(raw.train_x)
    assert np.allclose(m, (0.4913, 0.4821, 0.4465), atol=2e-4) and np.allclose(s, (0.2452, 0.2428, 0.2606), atol=2e-4)
    assert not (root / ".cnnlab-cache").exists()  # a read-only shared root is never written to
    again = data.load_cifar10(root)
    assert again.from_cache and torch.equal(again.test_x, raw.test_x)
    splits = data.load_splits(cfg(name="cifar10", root=str(root)))
    assert len(splits.val_x) == 5000 and len(splits.train_x) == 45000


# --------------------------------------------------------------------------- info, root, describe


def test_dataset_info_needs_no_files():
    assert data.dataset_info("mnist") == data.DatasetInfo(10, 1, 28, 60000, 10000)
    assert data.dataset_info("cifar10") == data.DatasetInfo(10, 3, 32, 50000, 5000)
    assert data.dataset_info("imagefolder").num_classes is None
    with pytest.raises(UnknownName, match="known: cifar10, fashion_mnist, imagefolder, mnist"):
        data.dataset_info("svhn")


def test_resolve_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.resolve_root(cfg(root=str(tmp_path / "cfg"))) == tmp_path / "cfg"
    assert data.resolve_root(cfg()) == tmp_path / "env"
    monkeypatch.delenv("CNNLAB_DATA")
    assert data.resolve_root(cfg()) == tmp_path / "home" / ".cache" / "cnnlab"


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


# --------------------------------------------------------------------------- batches


def test_batches_cover_every_index_once():
    g = torch.Generator().manual_seed(0)
    got = list(data.batches(103, 10, g))
    assert [len(b) for b in got] == [10] * 10 + [3]
    assert torch.equal(torch.cat(got).sort().values, torch.arange(103))
    assert [len(b) for b in data.batches(103, 10, g, drop_last=True)] == [10] * 10
    assert torch.equal(torch.cat(list(data.batches(7, 3, shuffle=False))), torch.arange(7))
    assert list(data.batches(0, 4, g)) == []


def test_batches_are_reproducible_and_reshuffle_each_epoch():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    e1 = torch.cat(list(data.batches(50, 8, g1)))
    assert torch.equal(e1, torch.cat(list(data.batches(50, 8, g2))))
    assert not torch.equal(e1, torch.cat(list(data.batches(50, 8, g1))))  # next epoch, new order
    with pytest.raises(ValueError):
        next(data.batches(5, 0, g1))


# --------------------------------------------------------------------------- Preprocess


@pytest.fixture(scope="module")
def mnist_small():
    c = cfg(name="mnist", root=str(real_root()), train_limit=64, val_size=100)
    return c, data.load_splits(c)


def test_preprocess_eval_normalises_exactly(mnist_small):
    c, s = mnist_small
    x = s.train_x[:16]
    out = data.Preprocess(s, c, train=False)(x)
    assert out.dtype == torch.float32 and out.shape == (16, 1, 28, 28)
    assert torch.allclose(out, (x.float() / 255 - 0.1307) / 0.3081, atol=1e-5)


def test_preprocess_repeat_and_resize(mnist_small):
    c, _ = mnist_small
    c3 = c.model_copy(update={"channels": 3, "resize": 32})
    s = data.load_splits(c3)
    out = data.Preprocess(s, c3, train=False)(s.train_x[:4])
    assert out.shape == (4, 3, 32, 32)
    assert torch.equal(out[:, 0], out[:, 1]) and torch.equal(out[:, 0], out[:, 2])


def test_preprocess_augments_only_in_training(mnist_small):
    c, s = mnist_small
    ca = c.model_copy(update={"augment": c.augment.model_copy(update={"crop_padding": 4, "flip": True, "brightness": 0.3})})
    x = s.train_x[:32]
    train, evaluate = data.Preprocess(s, ca, train=True), data.Preprocess(s, ca, train=False)
    a = train(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, train(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, train(x, torch.Generator().manual_seed(2)))
    assert torch.equal(evaluate(x), data.Preprocess(s, c, train=False)(x))
    with pytest.raises(ValueError, match="Generator"):
        train(x)
    bad = c.model_copy(update={"augment": c.augment.model_copy(update={"crop_padding": 30, "crop_mode": "reflect"})})
    with pytest.raises(ConfigError, match="crop_padding=30"):
        data.Preprocess(s, bad, train=True)


def test_corrupt_official_cifar_batches_are_named(tmp_path):
    batches = tmp_path / "cifar-10-batches-py"
    batches.mkdir()
    for name, _ in data._cifar_batch_files():
        if name != "test_batch":  # one file missing, the rest present but not the official bytes
            (batches / name).write_bytes(b"not a pickle")
    with pytest.raises(DataError) as e:
        data.load_cifar10(tmp_path)
    msg = str(e.value)
    assert "data_batch_1, data_batch_2" in msg and "fail the MD5 check" in msg
    assert "test_batch is missing" in msg and "data.download=true" in msg and "\n" not in msg
