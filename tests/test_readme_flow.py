"""The README's newcomer flow, run as the README writes it: the study file and every ``cnnlab`` command
of "Your own images" and "Using a trained model" are read from README.md and run (through cli.main) on
folders this test generates: a flat folder of mixed-size JPEG and PNG images, some grey, one notes.txt;
then the README's onnxruntime snippet, and ``cnnlab.load(run).predict``. Only speed settings are added
to the training command (1 epoch, small images, one thread)."""
from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.cli import main

README = Path(__file__).resolve().parents[1] / "README.md"
SECTIONS = ("## Your own images", "## Using a trained model")
FAST = ["train.epochs=1", "data.resize=16", "train.threads=1", "train.progress=false"]


def section(title: str) -> str:
    text = README.read_text()
    start = text.index(title)
    end = text.find("\n## ", start + len(title))
    return text[start:end if end > 0 else None]


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def commands() -> list[list[str]]:
    """Every ``cnnlab ...`` line of the sections' bash blocks, split as a shell would (comments dropped)."""
    out = []
    for title in SECTIONS:
        for block in blocks(section(title), "bash"):
            out += [shlex.split(line, comments=True)[1:] for line in block.splitlines() if line.startswith("cnnlab ")]
    return out


def photos(root: Path, per_class: int, seed: int) -> None:
    """Classes told apart by brightness; mixed sizes, JPEG and PNG, a third of them grey, one nested folder."""
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(("cat", "dog", "fox")):
        folder = root / c / ("2023" if c == "fox" else "")
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = (rng.integers(0, 90, (18 + 5 * (i % 3), 22 + 4 * (i % 2), 3)) + 80 * ci).astype(np.uint8)
            img = Image.fromarray(arr)
            if i % 3 == 0:
                img.convert("L").save(folder / f"{i}.png")
            elif i % 3 == 1:
                img.save(folder / f"{i}.jpg", quality=90)
            else:
                img.save(folder / f"{i}.png")
    (root / "notes.txt").write_text("where these photos come from\n")


@pytest.fixture
def newcomer(tmp_path, monkeypatch):
    """A working folder as the README assumes it: photos/, new_photos/, labelled/{train,test}/, loose files."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))
    photos(tmp_path / "photos", per_class=8, seed=0)
    photos(tmp_path / "new_photos", per_class=3, seed=1)
    photos(tmp_path / "labelled" / "train", per_class=2, seed=2)
    photos(tmp_path / "labelled" / "test", per_class=2, seed=3)
    rng = np.random.default_rng(4)
    Image.fromarray(rng.integers(0, 255, (31, 27, 3), dtype=np.uint8)).save("photo.jpg")
    Path("scans").mkdir()
    Image.fromarray(rng.integers(0, 255, (25, 20), dtype=np.uint8)).save("scans/page1.png")
    Path("more/2024").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (19, 40, 3), dtype=np.uint8)).save("more/2024/x.png")
    study = blocks(section(SECTIONS[0]), "yaml")[0]
    Path(study.splitlines()[0].split()[1]).write_text(study)  # "# my_photos.yaml ..." names the file
    return tmp_path


def test_the_readme_flow_from_a_folder_of_photos_to_onnx_and_python(newcomer, capsys):
    import cnnlab

    cmds = commands()
    assert [c[0] for c in cmds] == ["train", "eval", "predict", "predict", "predict", "explain", "eval", "eval",
                                    "export", "export"]
    seen: dict[str, str] = {}
    for args in cmds:
        extra = FAST if args[0] == "train" else []
        code = main([*args, *extra])
        out, err = capsys.readouterr()
        assert code == 0, f"cnnlab {shlex.join(args)} exited {code}: {err}"
        seen[shlex.join(args)] = out

    train_out = next(v for k, v in seen.items() if k.startswith("train"))
    assert "1 file that are not images skipped (notes.txt)" in train_out and "status: completed" in train_out
    run = Path("runs/photos")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["classes"] == ["cat", "dog", "fox"] and summary["data_placement"] == "device"
    assert summary["preprocess"]["input_shape"] == [3, 16, 16]
    assert "confusion (rows: true" in seen["eval runs/photos --split val,test"]

    # predict: a table of the loose files, then a CSV with the top 5 (3 classes: all of them)
    table = seen["predict runs/photos photo.jpg scans/ 'more/**/*.png'"]
    assert all(f in table for f in ("photo.jpg", "scans/page1.png", "more/2024/x.png"))
    rows = list(csv.reader(open("preds.csv")))
    assert rows[0] == ["file", "class_1", "p_1", "class_2", "p_2", "class_3", "p_3"] and rows[1][0] == "scans/page1.png"

    # calibrated: the same classes; explain: one Grad-CAM picture per input image
    calibrated = seen["predict runs/photos scans/ --calibrated"]
    assert "scans/page1.png" in calibrated and summary["calibration"]["temperature"] > 0
    assert sorted(p.name for p in Path("cams").iterdir()) == ["page1.gradcam.png", "photo.gradcam.png"]

    # eval on other folders: the whole flat new_photos/ (9 images), the test/ part of labelled/ (6) as JSON
    assert "accuracy" in seen["eval runs/photos data.name=imagefolder data.root=new_photos/"]
    result = json.loads(seen["eval runs/photos data.root=labelled/ --split test --json"])
    assert sum(result["test"]["per_class"]["support"]) == 6

    # the README's onnxruntime snippet, then the exported network against PyTorch on a real image
    ort = pytest.importorskip("onnxruntime")
    scope: dict = {}
    exec(blocks(section("## Using a trained model"), "python")[0], scope)
    assert scope["classes"] == summary["classes"] and scope["mean"] == summary["preprocess"]["mean"]
    m = cnnlab.load(run)
    x = m.transform("photo.jpg").unsqueeze(0)
    with torch.no_grad():
        expected = m.model(x).numpy()
    got = scope["s"].run(None, {scope["s"].get_inputs()[0].name: x.numpy()})[0]
    assert abs(got - expected).max() < 1e-4
    assert torch.allclose(torch.jit.load("model.pt")(x), torch.from_numpy(expected), atol=1e-5)

    # Python: the same predictions as the command
    preds = m.predict(["scans/page1.png", "photo.jpg"], top_k=3)
    assert [p["file"] for p in preds] == ["scans/page1.png", "photo.jpg"] and m.input_shape == (3, 16, 16)
    assert preds[0]["class"] == rows[1][1] and abs(preds[0]["probability"] - float(rows[1][2])) < 1e-5


def test_split_on_a_flat_folder_is_refused_naming_it(newcomer, capsys):
    assert main(["train", "my_photos.yaml", "--out", "runs/p", *FAST, "model.name=lenet5_cifar"]) == 0
    capsys.readouterr()
    assert main(["eval", "runs/p", "data.root=new_photos/", "--split", "test"]) == 2
    err = capsys.readouterr().err
    assert "new_photos" in err and "no train/ and test/ parts" in err and "Traceback" not in err
