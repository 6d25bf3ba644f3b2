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
    from cnnlab.predict import load_run

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
    from cnnlab.predict import read_image

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
