"""Training and serving agree (issue 25, item 1): for every file, the uint8 tensor the training path makes
(the image-folder loader, its decoded cache, data.channels) equals what predict makes of the same file
(Transform.read, which cnnlab predict and cnnlab.load(...).predict use), for JPEG, PNG with alpha, palette
PNG with transparency, grey, 16-bit grey PNG, every data.resize_policy and every data.resize_mode."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab import data
from cnnlab.config.schema import DataConfig
from cnnlab.data.augment import preprocess_record
from cnnlab.inference.load import Transform

POLICIES = DataConfig.model_fields["resize_policy"].annotation.__args__
MODES = DataConfig.model_fields["resize_mode"].annotation.__args__


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def _noise(rng, h: int, w: int, c: int = 3) -> np.ndarray:
    """Smooth gradients plus noise: a resize by another filter or rule shows in many pixels."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy * 255 // max(1, h - 1) + xx * 127 // max(1, w - 1)) % 256
    noise = rng.integers(0, 64, (h, w, c))
    return ((base[..., None] + noise) % 256).astype(np.uint8)


def _image(kind: str, rng, h: int, w: int) -> tuple[Image.Image, str]:
    """One image of a kind, and the suffix it is saved with."""
    if kind == "jpeg":
        return Image.fromarray(_noise(rng, h, w)), ".jpg"
    if kind == "rgba":
        rgba = np.concatenate([_noise(rng, h, w), rng.integers(0, 256, (h, w, 1), dtype=np.uint8)], axis=2)
        return Image.fromarray(rgba, "RGBA"), ".png"
    if kind == "palette":
        im = Image.fromarray(_noise(rng, h, w)).convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
        im.info["transparency"] = 3  # palette index 3 is see-through
        return im, ".png"
    if kind == "grey":
        return Image.fromarray(_noise(rng, h, w, 1)[..., 0], "L"), ".png"
    if kind == "grey16":
        wide = (_noise(rng, h, w, 1)[..., 0].astype(np.uint16) * 257 + rng.integers(0, 257, (h, w))).astype(
            np.uint16)
        return Image.fromarray(wide), ".png"  # mode I;16
    raise ValueError(kind)


def make_folder(root: Path, kinds: tuple[str, ...], per_kind: int = 2, seed: int = 0) -> list[Path]:
    """root/<class>/ with ``per_kind`` images of each kind per class, of sizes and aspect ratios that differ
    (taller, wider, smaller and larger than the target), so every policy crops, pads or stretches."""
    rng = np.random.default_rng(seed)
    sizes = [(23, 37), (41, 19), (9, 13), (16, 16)]
    files = []
    for c in ("a", "b"):
        for k, kind in enumerate(kinds):
            for i in range(per_kind):
                h, w = sizes[(k + i) % len(sizes)]
                im, suffix = _image(kind, rng, h, w)
                path = root / c / f"{kind}-{i}{suffix}"
                path.parent.mkdir(parents=True, exist_ok=True)
                im.save(path, transparency=im.info["transparency"]) if kind == "palette" else im.save(path)
                files.append(path)
    return files


def training_tensors(s) -> dict[str, torch.Tensor]:
    """Each file's uint8 [C, H, W] as training feeds it (the stored image, grey repeated for channels=3)."""
    out = {}
    for split, listed in s.files.items():
        x = getattr(s, f"{split}_x")
        for i, (path, _) in enumerate(listed):
            img = x[i]
            out[path] = img.expand(s.in_channels, -1, -1) if img.shape[0] != s.in_channels else img
    return out


ALL_KINDS = ("jpeg", "rgba", "palette", "grey", "grey16")


def test_the_files_are_what_the_matrix_says(tmp_path):
    files = make_folder(tmp_path / "photos", ALL_KINDS)
    modes = {p.stem.split("-")[0]: Image.open(p).mode for p in files}
    assert modes["jpeg"] == "RGB" and modes["rgba"] == "RGBA" and modes["grey"] == "L"
    assert modes["palette"] == "P" and "transparency" in Image.open(files[4]).info
    assert modes["grey16"] in ("I;16", "I")  # Pillow's name for a 16-bit grey PNG differs between versions


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("kinds,channels", [(ALL_KINDS, None), (ALL_KINDS, 1), (("grey", "grey16"), None)],
                         ids=["colour", "colour-as-grey", "grey"])
def test_training_and_predict_make_the_same_tensor_of_every_file(tmp_path, policy, mode, kinds, channels):
    root = tmp_path / "photos"
    make_folder(root, kinds)
    cfg = DataConfig(name="imagefolder", root=str(root), resize=[12, 14], resize_policy=policy, resize_mode=mode,
                     channels=channels, val_size=0.25, test_size=0.25)
    s = data.load_splits(cfg)
    assert s.in_channels == (1 if channels == 1 or kinds == ("grey", "grey16") else 3)
    again = data.load_splits(cfg)  # the second load comes from the decoded cache
    assert "cache" in again.source or again.train_x.data_ptr() != s.train_x.data_ptr()
    transform = Transform(preprocess_record(s, cfg))  # what the checkpoint saves, and predict rebuilds
    for source in (s, again):
        tensors = training_tensors(source)
        assert len(tensors) == 2 * len(kinds) * 2
        for path, expected in tensors.items():
            got = transform.read(root / path)
            assert got.dtype == torch.uint8 and got.shape == expected.shape, path
            assert torch.equal(got, expected), f"{path}: {int((got.int() - expected.int()).abs().max())} levels off"
            with Image.open(root / path) as im:  # a PIL image of the file, as cnnlab.load(...).predict takes it
                assert torch.equal(transform.read(im), expected), path


def test_a_run_predicts_its_own_training_files_as_it_scored_them(tmp_path):
    """cnnlab.load(...).predict of a file gives the probabilities of the tensor the run trained on (crop and
    bicubic, the pair that used to differ, on transparent PNGs)."""
    import cnnlab

    root = tmp_path / "photos"
    make_folder(root, ALL_KINDS)
    overrides = {"data.name": "imagefolder", "data.root": str(root), "data.resize": 12, "data.resize_policy": "crop",
                 "data.resize_mode": "bicubic", "data.val_size": 0.25, "data.test_size": 0.25, "model.name": "mlp",
                 "train.epochs": 1, "train.batch_size": 4, "train.progress": False, "train.precision": "fp32",
                 "train.threads": 1}
    run = cnnlab.train({"name": "parity"}, overrides, out=tmp_path / "run", report=False)
    assert run.status == "completed"
    loaded = cnnlab.load(tmp_path / "run")
    s = data.load_splits(loaded.config.data)
    tensors = training_tensors(s)
    names = sorted(tensors)
    rows = loaded.predict([root / n for n in names], top_k=2)
    probs = loaded.probabilities(torch.stack([tensors[n] for n in names]))
    for name, row, p in zip(names, rows, probs):
        assert row["class"] == loaded.classes[int(p.argmax())]
        assert row["probability"] == round(float(p.max()), 6), name


@pytest.mark.parametrize("mode", MODES)
def test_a_batch_resized_set_is_decoded_at_its_own_size_then_resized_as_its_batches(tmp_path, data_root, mode):
    """MNIST with data.resize is resized on the batch (not when decoded): predict decodes a file at its own
    size and resizes it by the same antialiased function (bicubic's overshoot clipped to the pixel range in
    both), so it differs from the training input by the final rounding to uint8 at most (before: Pillow's
    resize, several levels off, and bicubic's overshoot kept by training only)."""
    from cnnlab.data.augment import Preprocess

    cfg = DataConfig(name="mnist", resize=32, resize_mode=mode, train_limit=50)
    s = data.load_splits(cfg)
    record = preprocess_record(s, cfg)
    assert record["resized_on_decode"] is False and record["input_shape"] == [1, 32, 32]
    pre, transform = Preprocess(s, cfg, train=False), Transform(record)
    for i in range(5):
        path = tmp_path / f"{i}.png"
        Image.fromarray(s.train_x[i, 0].numpy(), "L").save(path)
        trained = pre(s.train_x[i : i + 1])[0]
        served = transform(path)
        step = 1 / 255 / record["std"][0]  # one uint8 level, in normalised units
        assert served.shape == trained.shape and float((served - trained).abs().max()) <= 0.5 * step + 1e-5
