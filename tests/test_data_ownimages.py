"""Your own images: flat root/<class>/ folders of mixed formats, sizes and colour modes, generated here
with Pillow. Split (stratified, reproducible), resize policies, EXIF orientation, colour modes, skipped
and unreadable files, the decode cache, and the errors a user meets (exit code 2 through the CLI)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import data
from cnnlab.cli import main
from cnnlab.data import DataError
from cnnlab.data.decode import Decode, decode_file, fit
from cnnlab.data.splits import stratified_split


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    folder = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("CNNLAB_CACHE", str(folder))
    return folder / "decoded"


def save(path: Path, img: Image.Image, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def make_flat(root: Path, per_class: int = 8, classes=("cat", "dog", "fox"), seed: int = 0) -> int:
    """A folder as people have one: mixed-size JPEG, PNG (grey, RGBA), palette GIF, an EXIF-rotated
    JPEG, plus notes.txt and .DS_Store. Returns the number of images."""
    rng = np.random.default_rng(seed)
    n = 0
    for c in classes:
        for i in range(per_class):
            h, w = 20 + 3 * (i % 4), 30 - 2 * (i % 3)
            rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            kind = i % 4
            if kind == 0:
                save(root / c / f"{i}.jpg", rgb, quality=90)
            elif kind == 1:
                save(root / c / "grey" / f"{i}.png", rgb.convert("L"))  # a subfolder of the class
            elif kind == 2:
                save(root / c / f"{i}.PNG", rgb.convert("RGBA"))
            else:
                save(root / c / f"{i}.gif", rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16))
            n += 1
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    save(root / classes[0] / "rotated.jpg", Image.fromarray(rng.integers(0, 256, (12, 24, 3), dtype=np.uint8)),
         exif=exif.tobytes())
    (root / "notes.txt").write_text("my photos\n")
    (root / classes[-1] / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    return n + 1


def settings(root: Path, **kw) -> dict:
    return {"name": "imagefolder", "root": str(root), "download": False, **kw}


def test_flat_folder_of_mixed_images_loads_split_and_recorded(tmp_path):
    n = make_flat(tmp_path / "photos")
    s = data.load_splits(settings(tmp_path / "photos", resize=16, test_size=0.2, val_size=0.2))
    assert s.classes == ["cat", "dog", "fox"] and s.in_channels == 3 and s.input_shape == (3, 16, 16)
    assert len(s.train_y) + len(s.val_y) + len(s.test_y) == n
    assert s.train_x.shape[1:] == (3, 16, 16) and s.train_x.dtype == torch.uint8
    assert "2 files that are not images skipped" in s.source and "notes.txt" in s.source
    rec = s.record()
    assert rec is not None and json.loads(json.dumps(rec)) == rec  # plain JSON
    listed = [p for split in ("train", "val", "test") for p, _ in rec["files"][split]]
    assert len(listed) == n and len(set(listed)) == n and "cat/grey/1.png" in listed
    for split in ("train", "val", "test"):  # labels follow the class folder
        assert all(p.split("/")[0] == s.classes[c] for p, c in rec["files"][split])
        assert [c for _, c in rec["files"][split]] == getattr(s, f"{split}_y").tolist()
    pre = s.preprocessing()
    assert pre["input_shape"] == [3, 16, 16] and pre["resize"] == [16, 16] and pre["resize_policy"] == "stretch"
    assert len(pre["mean"]) == 3 and pre["classes"] == s.classes
    # the saved lists rebuild the same split, even with another split_seed
    again = data.load_splits(settings(tmp_path / "photos", resize=16, test_size=0.2, val_size=0.2, split_seed=9),
                             saved=rec)
    assert again.record()["files"] == rec["files"] and torch.equal(again.test_x, s.test_x)


def test_stratified_split_sizes_and_reproducibility():
    labels = torch.tensor([0] * 10 + [1] * 20 + [2] * 30)
    train, val, test = stratified_split(labels, 12, 6, seed=0)
    assert torch.bincount(labels[test]).tolist() == [2, 4, 6] and torch.bincount(labels[val]).tolist() == [1, 2, 3]
    assert len(train) == 42 and len(set(torch.cat([train, val, test]).tolist())) == 60
    assert all(torch.equal(a, b) for a, b in zip((train, val, test), stratified_split(labels, 12, 6, seed=0)))
    assert not torch.equal(test, stratified_split(labels, 12, 6, seed=1)[2])
    # counts that do not divide evenly still add up exactly, and every class keeps a training image
    tr, va, te = stratified_split(torch.tensor([0] * 3 + [1] * 7), 3, 3, seed=0)
    assert len(te) == 3 and len(va) == 3 and set(torch.tensor([0] * 3 + [1] * 7)[tr].tolist()) == {0, 1}


def test_split_fractions_and_counts_through_load_splits(tmp_path):
    make_flat(tmp_path / "p", per_class=10)  # 31 images
    a = data.load_splits(settings(tmp_path / "p", resize=8, test_size=6, val_size=0.1, split_seed=3))
    b = data.load_splits(settings(tmp_path / "p", resize=8, test_size=6, val_size=0.1, split_seed=3))
    c = data.load_splits(settings(tmp_path / "p", resize=8, test_size=6, val_size=0.1, split_seed=4))
    assert len(a.test_y) == 6 and len(a.val_y) == 3 and len(a.train_y) == 22
    assert a.record()["files"] == b.record()["files"] and a.record()["files"] != c.record()["files"]
    assert torch.bincount(a.test_y).tolist() == [2, 2, 2]


def test_resize_policies_shape_and_content():
    # a 10x20 (height x width) grey image: left half 50, right half 200
    arr = np.full((10, 20), 200, np.uint8)
    arr[:, :10] = 50
    img = Image.fromarray(arr)
    pad = np.asarray(fit(img, Decode.of(20, "pad")))
    assert pad.shape == (20, 20)
    assert (pad[:5] == 0).all() and (pad[15:] == 0).all()  # letterbox bars above and below
    assert (pad[5:15, :9] == 50).all() and (pad[5:15, 11:] == 200).all()
    crop = np.asarray(fit(img, Decode.of(10, "crop")))  # the centre 10x10: columns 5..14
    assert crop.shape == (10, 10) and (crop[:, :5] == 50).all() and (crop[:, 5:] == 200).all()
    stretch = np.asarray(fit(img, Decode.of([20, 40], "stretch")))
    assert stretch.shape == (20, 40) and (stretch[:, :19] == 50).all() and (stretch[:, 21:] == 200).all()
    tall = np.asarray(fit(Image.fromarray(arr.T.copy()), Decode.of([10, 20], "pad")))  # 20x10 into 10x20
    assert tall.shape == (10, 20) and (tall[:, :5] == 0).all() and (tall[:, 15:] == 0).all()


def test_exif_orientation_and_colour_modes(tmp_path):
    rng = np.random.default_rng(0)
    arr = np.zeros((12, 24, 3), np.uint8)
    arr[:, :12] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6
    p = save(tmp_path / "r.jpg", Image.fromarray(arr), exif=exif.tobytes(), quality=100)
    out = decode_file(p)
    assert out.shape == (24, 12, 3)  # turned upright: 90° clockwise
    assert out[:10].mean() > 240 and out[14:].mean() < 15  # the white half is now on top
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = 180
    rgba[:2, :, 3] = 255  # top half opaque, bottom half transparent
    q = save(tmp_path / "a.png", Image.fromarray(rgba, "RGBA"))
    out = decode_file(q)
    assert out.shape == (4, 4, 3) and (out[:2] == 180).all() and (out[2:] == 0).all()  # over black
    cmyk = save(tmp_path / "c.jpg", Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("CMYK"))
    assert decode_file(cmyk).shape == (6, 6, 3)
    gif = save(tmp_path / "g.gif", Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)).convert("P"))
    assert np.array_equal(decode_file(gif), np.asarray(Image.open(gif).convert("RGB")))
    bmp = save(tmp_path / "b.bmp", Image.fromarray(rng.integers(0, 256, (6, 6), dtype=np.uint8)))
    assert decode_file(bmp).shape == (6, 6)
    for fmt in ("webp", "tiff"):
        f = save(tmp_path / f"x.{fmt}", Image.fromarray(rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)))
        assert decode_file(f).shape == (6, 6, 3)


def test_grey_folder_is_one_channel_and_channels_setting(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(4):
            save(tmp_path / "g" / c / f"{i}.png", Image.fromarray(rng.integers(0, 256, (9, 9), dtype=np.uint8)))
    s = data.load_splits(settings(tmp_path / "g"))
    assert s.in_channels == 1 and s.train_x.shape[1] == 1
    s3 = data.load_splits(settings(tmp_path / "g", channels=3))
    assert s3.in_channels == 3 and s3.input_shape == (3, 9, 9) and len(s3.mean) == 3


def test_cache_hit_then_miss_after_touching_a_file(tmp_path, cache):
    make_flat(tmp_path / "p", per_class=4)
    first = data.load_raw(settings(tmp_path / "p", resize=8))
    assert not first.from_cache and first.cache_path.parent == cache
    assert not any(p.suffix == ".pt" for p in (tmp_path / "p").rglob("*"))  # nothing inside the data root
    second = data.load_raw(settings(tmp_path / "p", resize=8))
    assert second.from_cache and torch.equal(second.train_x, first.train_x)
    other = data.load_raw(settings(tmp_path / "p", resize=8, resize_policy="pad"))  # other settings, other cache
    assert not other.from_cache and other.cache_path != first.cache_path
    os.utime(tmp_path / "p" / "cat" / "0.jpg", ns=(1, 1))
    assert not data.load_raw(settings(tmp_path / "p", resize=8)).from_cache
    assert data.load_raw(settings(tmp_path / "p", resize=8)).from_cache


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def cli_train(root: Path, out: Path, capsys, *extra: str) -> tuple[int, str]:
    code = main(["train", "recipes/quickstart_lenet5_mnist.yaml", "data.name=imagefolder", f"data.root={root}",
                 "train.epochs=1", "train.progress=false", *extra, "--out", str(out)])
    return code, capsys.readouterr().err


def test_user_errors_exit_2_naming_the_file(tmp_path, capsys):
    make_flat(tmp_path / "mixed", per_class=4)
    code, err = cli_train(tmp_path / "mixed", tmp_path / "r1", capsys)
    assert code == 2 and "differ in size" in err and "data.resize" in err and "Traceback" not in err
    assert err.count("(height x width)") == 1 and len([w for w in err.split() if w.endswith((".jpg", ".png", ".PNG", ".gif"))]) >= 2

    make_flat(tmp_path / "trunc", per_class=4)
    truncate(tmp_path / "trunc" / "dog" / "0.jpg")
    code, err = cli_train(tmp_path / "trunc", tmp_path / "r2", capsys, "data.resize=32")
    assert code == 2 and str(tmp_path / "trunc" / "dog" / "0.jpg") in err and "skip_bad_images" in err

    make_flat(tmp_path / "one", per_class=4, classes=("cat",))
    code, err = cli_train(tmp_path / "one", tmp_path / "r3", capsys, "data.resize=32")
    assert code == 2 and str(tmp_path / "one") in err and "at least 2 classes" in err

    make_flat(tmp_path / "empty", per_class=4, classes=("cat", "dog"))
    (tmp_path / "empty" / "owl").mkdir()
    (tmp_path / "empty" / "owl" / "readme.txt").write_text("todo")
    code, err = cli_train(tmp_path / "empty", tmp_path / "r4", capsys, "data.resize=32")
    assert code == 2 and str(tmp_path / "empty" / "owl") in err and "holds no images" in err
    assert not any((tmp_path / f"r{i}").exists() for i in range(1, 5))


def test_skip_bad_images_trains_and_lists_them(tmp_path, capsys):
    make_flat(tmp_path / "p", per_class=6, classes=("cat", "dog"))
    truncate(tmp_path / "p" / "dog" / "4.jpg")
    (tmp_path / "p" / "cat" / "fake.png").write_text("not an image")
    out = tmp_path / "run"
    code, err = cli_train(tmp_path / "p", out, capsys, "data.resize=32", "data.skip_bad_images=true",
                          "data.val_size=2", "data.test_size=2")
    assert code == 0, err
    rec = json.loads((out / "splits.json").read_text())
    assert sorted(p for p, _ in rec["bad_images"]) == ["cat/fake.png", "dog/4.jpg"]
    assert (out / "bad_images.txt").read_text().count("\n") == 2
    assert sum(len(v) for v in rec["files"].values()) == 14 - 2  # 13 images and fake.png, less the two bad ones
    assert len(rec["files"]["test"]) == 2 and rec["preprocessing"]["input_shape"] == [3, 32, 32]
    # eval uses the saved split: the same test files
    from cnnlab.inference.predict import evaluate_run

    result = evaluate_run(out, ["test"])
    assert sum(result["test"]["per_class"]["support"]) == 2
