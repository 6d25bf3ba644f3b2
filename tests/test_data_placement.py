"""Where the splits are kept (cnnlab.data.placement): the decision from the figures, data.max_memory,
HostImages batches equal to the stored tensor's, and a streamed run bit-identical to the in-memory one
(metrics.jsonl, final scores, mistakes), for image folders, a CIFAR-10 export and MNIST."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_files import cfg, listing, make_tree, real_root
from PIL import Image

from cnnlab import data
from cnnlab.models import transfer
from cnnlab.config.schema import ConfigError
from cnnlab.data import placement
from cnnlab.data.batches import eval_batches, train_batches
from cnnlab.data.placement import HostImages, choose_placement
from cnnlab.data.sources import cifar10
from cnnlab.config.load import load_config

GB = 10**9


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CNNLAB_CACHE", str(folder))
    return folder


def photos(root: Path, per_class: int = 12, classes=("ant", "bee", "cow")) -> Path:
    """A flat folder of colour JPEG and PNG images of a few sizes (resized when read)."""
    rng = np.random.default_rng(1)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 120, (14 + i % 3, 12, 3), dtype=np.uint8) + 60 * ci  # learnable: brightness
            Image.fromarray(arr.astype(np.uint8)).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return root


# --------------------------------------------------------------------------- the decision


def test_the_decision_from_the_figures():
    # CPU: half the available RAM, or data.max_memory as given
    assert choose_placement(4 * GB, "cpu", None, 10 * GB) == "device"
    assert choose_placement(6 * GB, "cpu", None, 10 * GB) == "stream"
    assert choose_placement(6 * GB, "cpu", None, 10 * GB, max_memory=8 * GB) == "device"
    assert choose_placement(6 * GB, "cpu", None, 100 * GB, max_memory=1 * GB) == "stream"
    # GPU: half its free memory; then half the RAM (pinned); then stream
    assert choose_placement(3 * GB, "cuda", 8 * GB, 64 * GB) == "device"
    assert choose_placement(5 * GB, "cuda", 8 * GB, 64 * GB) == "pinned"
    assert choose_placement(40 * GB, "cuda", 8 * GB, 64 * GB) == "stream"
    # an explicit budget: more of the GPU if asked, never more than it has free; the same cap in RAM
    assert choose_placement(7 * GB, "cuda", 8 * GB, 64 * GB, max_memory=7 * GB) == "device"
    assert choose_placement(9 * GB, "cuda", 8 * GB, 64 * GB, max_memory=20 * GB) == "pinned"
    assert choose_placement(9 * GB, "cuda", 8 * GB, 64 * GB, max_memory=5 * GB) == "stream"
    # this machine's figures are read (a CPU has RAM available; it has no GPU memory)
    assert placement.host_available() > 0 and placement.device_available("cpu") is None


@pytest.mark.parametrize("given, parsed", [
    ("auto", "auto"), ("2GB", 2 * 10**9), ("500MB", 500 * 10**6), ("1.5GiB", int(1.5 * 2**30)),
    ("64 kb", 64_000), (123456, 123456), ("1000", 1000),
])  # fmt: skip
def test_max_memory_takes_auto_a_size_or_bytes(given, parsed):
    assert load_config(None, {"data.max_memory": given}).data.max_memory == parsed


@pytest.mark.parametrize("bad", ["lots", "2 parsecs", "-1GB", 0, -5, True, "GB", [1]])
def test_a_bad_max_memory_names_the_field_and_what_is_allowed(bad):
    with pytest.raises(ConfigError, match=r"data\.max_memory(.|\n)*auto(.|\n)*2GB"):
        load_config(None, {"data.max_memory": bad})


# --------------------------------------------------------------------------- batches from the host


def test_host_images_hand_out_the_batches_the_tensor_would():
    x = torch.randint(0, 256, (50, 3, 5, 4), dtype=torch.uint8)
    rows = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:37]
    split = x[rows]
    host = HostImages(x, rows, "cpu")
    assert host.shape == split.shape and len(host) == 37 and host.device == torch.device("cpu")
    for key in (slice(0, 10), slice(30, 99), torch.tensor([5, 1, 36, 0, 5]), torch.arange(37).flip(0)):
        assert torch.equal(host[key], split[key])
    y = torch.arange(37)
    for (a, ya), (b, yb) in zip(train_batches(host, y, 8, seed=3, epoch=2, start=1),
                                train_batches(split, y, 8, seed=3, epoch=2, start=1), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)
    assert [torch.equal(a, b) for (a, _), (b, _) in zip(eval_batches(host, y, 10), eval_batches(split, y, 10))] \
        == [True] * 4
    grey = HostImages(x, rows, "cpu", grey=True)  # data.channels=1 on colour images, per batch
    assert grey.shape == (37, 1, 5, 4) and torch.equal(grey[torch.tensor([3, 2])], data.splits.to_grey(split[[3, 2]]))
    assert torch.equal(HostImages(x, None, "cpu")[slice(4, 9)], x[4:9])


# --------------------------------------------------------------------------- whole splits, streamed


def _same_splits(a, b) -> None:
    for s in ("train", "val", "test"):
        xa, xb = getattr(a, f"{s}_x"), getattr(b, f"{s}_x")
        assert isinstance(xa, torch.Tensor) and isinstance(xb, HostImages)
        assert tuple(xa.shape) == tuple(xb.shape) and torch.equal(xa, xb[0 : len(xb)])
        assert torch.equal(getattr(a, f"{s}_y"), getattr(b, f"{s}_y"))
    assert a.mean == b.mean and a.std == b.std and a.files == b.files and a.input_shape == b.input_shape


@pytest.mark.parametrize("channels", [None, 1])
def test_a_flat_folder_streams_from_its_decoded_cache(tmp_path, cache, channels):
    root = photos(tmp_path / "photos")
    before = listing(root)
    settings = dict(name="imagefolder", root=str(root), resize=8, channels=channels)
    held = data.load_splits(cfg(**settings))
    streamed = data.load_splits(cfg(**settings, max_memory=1000))  # 36 images of 8x8x3 are 6,912 bytes
    assert held.placement == "device" and held.placement_note == ""
    path = Path(streamed.placement.removeprefix("streamed from "))
    assert path.is_file() and path.parent == cache / "decoded" and listing(root) == before  # not the data root
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # the decoded cache itself, no second copy
    _same_splits(held, streamed)


def test_a_cifar10_export_and_mnist_stream_too(tmp_path, cache):
    counts = {"train": {c: 3 for c in cifar10.CLASSES}, "test": {c: 1 for c in cifar10.CLASSES}}
    make_tree(tmp_path / "cifar10", counts=counts, size=(32, 32))
    settings = dict(name="cifar10", root=str(tmp_path), val_size=5)
    _same_splits(data.load_splits(cfg(**settings)), data.load_splits(cfg(**settings, max_memory="10kB")))
    # MNIST is read from its own files: a copy goes to the cache directory once, then is reused
    settings = dict(name="mnist", root=str(real_root()), train_limit=300, val_size=100)
    held, streamed = data.load_splits(cfg(**settings)), data.load_splits(cfg(**settings, max_memory=1000))
    _same_splits(held, streamed)
    again = data.load_splits(cfg(**settings, max_memory=1000))
    assert again.placement == streamed.placement and "mnist-stream-" in again.placement
    assert len(list((cache / "decoded").glob("mnist-stream-*.pt"))) == 1


def test_streaming_needs_a_writable_cache_directory(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    monkeypatch.setenv("CNNLAB_CACHE", str(locked))
    try:
        with pytest.raises(data.DataError, match=r"data\.max_memory.*CNNLAB_CACHE"):
            data.load_splits(cfg(name="mnist", root=str(real_root()), train_limit=50, val_size=10, max_memory=1))
    finally:
        locked.chmod(0o755)


def test_frozen_features_of_streamed_splits_are_the_same(tmp_path):
    from cnnlab.data.augment import Preprocess
    from cnnlab.training.scoring import Evaluator

    settings = dict(name="imagefolder", root=str(photos(tmp_path / "p")), resize=8)
    held, streamed = data.load_splits(cfg(**settings)), data.load_splits(cfg(**settings, max_memory=1))
    backbone = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten())
    features = [transfer.cached_features(backbone, s, Evaluator(Preprocess(s), 7, "fp32", torch.device("cpu"),
                                                                "logits", s.num_classes)) for s in (held, streamed)]
    for split in ("train", "val", "test"):
        assert torch.equal(getattr(features[0], f"{split}_x"), getattr(features[1], f"{split}_x"))


# --------------------------------------------------------------------------- a whole run, streamed


def _train(root: Path, out: Path, **extra):
    import cnnlab

    overrides = {"data.name": "imagefolder", "data.root": str(root), "data.resize": 8, "data.augment.flip": True,
                 "data.augment.crop_padding": 1, "model.name": "mnist_cnn", "loss.name": "nll", "train.epochs": 2, "train.batch_size": 8,
                 "train.eval_every": 2, "train.progress": False, "train.threads": 1, **extra}
    return cnnlab.train({"name": "s"}, overrides, out=out, report=False)


def test_a_streamed_run_gives_the_in_memory_run_s_metrics_bit_for_bit(tmp_path, capsys):
    root = photos(tmp_path / "photos")
    held = _train(root, tmp_path / "held")
    streamed = _train(root, tmp_path / "streamed", **{"data.max_memory": "1kB"})
    log = capsys.readouterr().out
    assert "on cpu, streamed from " in log
    rows = [[{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
             for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (held.dir, streamed.dir)]
    assert len(rows[0]) > 3 and rows[0] == rows[1]
    a, b = (json.loads((run.dir / "summary.json").read_text()) for run in (held, streamed))
    assert a["data_placement"] == "device" and b["data_placement"].startswith("streamed from ")
    for split in ("train", "val", "test"):
        assert a[split] == b[split]
    ma, mb = (torch.load(run.dir / "misclassified.pt", weights_only=True) for run in (held, streamed))
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # cnnlab eval of the streamed run streams as well, and scores what training scored
    from cnnlab.inference.predict import evaluate_run

    assert evaluate_run(streamed.dir)["test"] == {k: v for k, v in b["test"].items()}


def test_a_resume_may_stream_what_the_run_kept_in_memory(tmp_path):
    import cnnlab

    root = photos(tmp_path / "photos")
    whole = _train(root, tmp_path / "whole")
    _train(root, tmp_path / "split", **{"train.epochs": 1})
    resumed = cnnlab.train(None, {"train.epochs": 2, "data.max_memory": 1}, out=tmp_path / "split", resume=True,
                           report=False)
    assert resumed.summary["data_placement"].startswith("streamed from ")
    assert resumed.summary["resumed"][0]["changes"]["data.max_memory"] == ["auto", 1]
    rows = [[{k: v for k, v in json.loads(line).items() if k != "elapsed_s"}
             for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (whole.dir, resumed.dir)]
    assert rows[0] == rows[1]
