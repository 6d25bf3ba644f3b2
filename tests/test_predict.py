"""cnnlab predict and eval on another folder, on a tiny real run and image files the tests write."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_image_folder


def cnnlab(*args):
    env = dict(os.environ, CNNLAB_NO_REEXEC="1")
    return subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_checkpoint_and_summary_carry_the_preprocessing(tiny_run):
    from cnnlab import runs

    state = runs.load_checkpoint(tiny_run.dir / "best.pt")
    pre = state["preprocess"]
    assert pre["input_shape"] == [1, 28, 28] and pre["channels"] == 1 and len(pre["classes"]) == 10
    assert pre["mean"][0] == pytest.approx(0.1307, abs=0.01) and pre["std"][0] == pytest.approx(0.3081, abs=0.01)
    assert tiny_run.summary["preprocess"] == pre


def test_loaded_run_matches_the_evaluator_on_test_images(tiny_run):
    """predict's own decoding + transform gives the probabilities the run's evaluation gives."""
    from cnnlab import data as datamod
    from cnnlab.inference.load import load_run

    run = load_run(tiny_run.dir)
    assert not run.model.training and run.input_shape == (1, 28, 28)
    raw = datamod.load_raw({"name": "mnist"})
    x, y = raw.test_x[:200], raw.test_y[:200]
    probs = run.probabilities(x)
    acc = float((probs.argmax(1) == y).float().mean())
    assert acc > 0.6 and torch.allclose(probs.sum(1), torch.ones(200), atol=1e-4)
    # through a PNG file: same pixels, same prediction
    img = Image.fromarray(x[0, 0].numpy(), mode="L")
    rows = run.predict([img, x[0]])
    assert rows[0]["top"] == rows[1]["top"] and rows[0]["class"] == run.classes[int(probs[0].argmax())]


def test_read_image_applies_exif_converts_modes_and_resizes(tmp_path):
    from cnnlab.inference.predict import read_image

    a = np.zeros((10, 20, 3), dtype=np.uint8)
    a[:, :10] = 255  # left half white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    img.save(tmp_path / "r.jpg", exif=exif)
    x = read_image(tmp_path / "r.jpg", 1, (20, 10))
    assert x.shape == (1, 20, 10) and x[0, :5].float().mean() > 200 and x[0, -5:].float().mean() < 50
    Image.fromarray(np.full((8, 8, 4), 200, dtype=np.uint8), mode="RGBA").save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png", 3, (4, 6), "pad").shape == (3, 4, 6)
    assert read_image(tmp_path / "a.png", 1, (5, 5), "crop").shape == (1, 5, 5)


def test_predict_command_files_folders_globs_and_bad_files(tiny_run, tmp_path):
    files = write_image_folder(tmp_path / "imgs", ["a", "b"], per_class=3, size=(40, 30), modes=("L", "RGB", "RGBA"))
    (tmp_path / "imgs" / "a" / "notes.txt").write_text("not an image")
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(files[1].read_bytes()[:100] if files[1].suffix == ".jpg" else b"\xff\xd8\xff garbage")
    out = tmp_path / "preds.csv"
    r = cnnlab("predict", str(tiny_run.dir), str(tmp_path / "imgs"), str(bad), str(tmp_path / "nothing*.png"),
               "--top-k", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert f"{bad}: not a readable image" in r.stderr and "nothing*.png: no such file" in r.stderr
    lines = r.stdout.strip().splitlines()
    assert lines[0].split()[:2] == ["file", "class"] and sum(str(tmp_path) in x or "…" in x for x in lines) >= 6
    rows = out.read_text().strip().splitlines()
    assert rows[0] == "file,class_1,p_1,class_2,p_2" and len(rows) == 7
    assert all(float(row.split(",")[2]) >= float(row.split(",")[4]) for row in rows[1:])

    out_json = tmp_path / "p.json"
    r = cnnlab("predict", str(tiny_run.dir), str(tmp_path / "imgs" / "*" / "*.png"), "--out", str(out_json))
    assert r.returncode == 0, r.stderr
    preds = json.loads(out_json.read_text())
    assert preds and all(len(p["top"]) == 3 and p["file"].endswith(".png") for p in preds)


def test_predict_nothing_readable_exits_2_naming_the_file(tiny_run, tmp_path):
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    r = cnnlab("predict", str(tiny_run.dir), str(tmp_path / "x.png"))
    assert r.returncode == 2 and "x.png" in r.stderr and "Traceback" not in r.stderr
    r = cnnlab("predict", str(tiny_run.dir), str(tmp_path / "x.png"), "--tta")
    assert r.returncode == 2 and "train.tta" in r.stderr


def _mnist_folder(root, classes, per_class=4):
    from cnnlab import data as datamod

    raw = datamod.load_raw({"name": "mnist"})
    for part, offset in (("train", 0), ("test", 5000)):
        for ci, name in enumerate(classes):
            d = root / part / name
            d.mkdir(parents=True)
            idx = (raw.test_y[offset:] == ci).nonzero().squeeze(1)[:per_class] + offset
            for j, i in enumerate(idx.tolist()):
                Image.fromarray(raw.test_x[i, 0].numpy(), mode="L").save(d / f"{j}.png")


def test_eval_on_another_labelled_folder(tiny_run, tmp_path):
    classes = tiny_run.summary["classes"]
    _mnist_folder(tmp_path / "other", classes)
    r = cnnlab("eval", str(tiny_run.dir), f"data.root={tmp_path / 'other'}", "data.name=imagefolder", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    scores = result["all"]
    assert sum(scores["per_class"]["support"]) == 80 and scores["accuracy"] > 0.5
    assert len(scores["confusion"]) == 10
    r = cnnlab("eval", str(tiny_run.dir), f"data.root={tmp_path / 'other'}", "data.name=imagefolder")
    assert r.returncode == 0 and "confusion (rows: true" in r.stdout and "f1" in r.stdout


def test_eval_on_a_folder_with_other_classes_names_them(tiny_run, tmp_path):
    write_image_folder(tmp_path / "pets" / "train", ["cat", "dog"], per_class=2)
    write_image_folder(tmp_path / "pets" / "test", ["cat", "dog"], per_class=2)
    r = cnnlab("eval", str(tiny_run.dir), f"data.root={tmp_path / 'pets'}", "data.name=imagefolder")
    assert r.returncode == 2, r.stdout + r.stderr
    assert "cat, dog" in r.stderr and "only in the run" in r.stderr and "Traceback" not in r.stderr
    r = cnnlab("eval", str(tiny_run.dir), "model.name=mlp")
    assert r.returncode == 2 and "model.name" in r.stderr


# ----------------------------------------------------------------------------- what predict takes (issue 25, 2)


def _digits(n=3, side=40):
    """MNIST test digits at another size than the run's 28 px, so every input form is resized."""
    from cnnlab import data as datamod

    x = datamod.load_raw({"name": "mnist"}).test_x[:n, 0]
    return [np.asarray(Image.fromarray(d.numpy(), mode="L").resize((side, side), Image.BICUBIC)) for d in x]


def test_predict_takes_paths_pil_and_uint8_arrays_and_tensors_in_any_layout_alike(tiny_run, tmp_path):
    import cnnlab

    run = cnnlab.load(tiny_run.dir)
    digits = _digits()
    paths = []
    for i, d in enumerate(digits):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(d, mode="L").save(paths[-1])
    expected = [r["top"] for r in run.predict(paths)]
    d = digits[0]
    rgb = np.repeat(d[:, :, None], 3, axis=2)
    forms = {
        "PIL": Image.fromarray(d, mode="L"),
        "numpy HW": d, "numpy HWC grey": d[:, :, None], "numpy HWC RGB": rgb,
        "numpy CHW": d[None], "tensor CHW": torch.from_numpy(d)[None], "tensor HWC RGB": torch.from_numpy(rgb),
        "tensor CHW RGB": torch.from_numpy(rgb).permute(2, 0, 1).contiguous(),
        "numpy RGBA opaque": np.dstack([rgb, np.full_like(d, 255)]),
    }
    for what, image in forms.items():
        (row,) = run.predict(image)
        assert row["class"] == expected[0][0][0], what
        assert [p for _, p in row["top"]] == pytest.approx([p for _, p in expected[0]], abs=2e-3), what
    # a batch: a 4-D uint8 array is several images, in order, mixed with paths in a list
    batch = np.stack(digits)[:, :, :, None]  # [N, H, W, 1]
    rows = run.predict([paths[0], batch, torch.from_numpy(np.stack(digits))[:, None]])
    assert [r["top"] for r in rows] == [expected[0], *expected, *expected]
    assert rows[0]["file"] == str(paths[0]) and rows[1]["file"] is None


def test_a_float_tensor_is_refused_unless_it_is_said_to_be_transformed(tiny_run, tmp_path):
    import cnnlab
    from cnnlab.config.schema import ConfigError

    run = cnnlab.load(tiny_run.dir)
    path = tmp_path / "digit.png"
    Image.fromarray(_digits(1)[0], mode="L").save(path)
    (from_path,) = run.predict(path)
    ready = run.transform(path)  # the model's input: decoded, scaled and normalised
    with pytest.raises(ConfigError, match=r"images: a float array or tensor of shape \(1, 28, 28\) is ambiguous.*"
                                          r"transformed=True"):
        run.predict(ready)  # once normalised a second time without a word
    with pytest.raises(ConfigError, match=r"images\[1\]: a float array"):
        run.predict([path, ready.numpy()])
    (as_given,) = run.predict(ready, transformed=True)
    assert [c for c, _ in as_given["top"]] == [c for c, _ in from_path["top"]]
    assert [p for _, p in as_given["top"]] == pytest.approx([p for _, p in from_path["top"]], abs=1e-5)
    both = run.predict([path, torch.stack([ready, ready])], transformed=True)  # raw images stay raw
    for row in both:
        assert [p for _, p in row["top"]] == pytest.approx([p for _, p in from_path["top"]], abs=1e-5)
    with pytest.raises(ConfigError, match=r"must have the run's input shape \[C, H, W\] = \[1, 28, 28\]"):
        run.predict(torch.zeros(3, 32, 32), transformed=True)


@pytest.mark.parametrize("bad, message", [
    (torch.zeros(28, 28, dtype=torch.int64), r"torch.int64 tensor is no image"),
    (np.zeros((28, 28), dtype=np.int32), r"torch.int32 tensor is no image"),
    (np.zeros((5, 28, 28), dtype=np.uint8), r"has no channel axis of 1, 3 or 4"),
    (np.zeros((2, 2, 2, 2, 2), dtype=np.uint8), r"shape \(2, 2, 2, 2, 2\) is no image"),
    (42, r"a int is not an image"),
])
def test_what_is_no_image_is_refused_naming_what_is_allowed(tiny_run, bad, message):
    import cnnlab
    from cnnlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match=message) as e:
        cnnlab.load(tiny_run.dir).predict(bad)
    assert "uint8 numpy array / tensor" in str(e.value)
