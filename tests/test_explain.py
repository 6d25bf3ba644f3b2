"""Grad-CAM (issue 27, item 5): on a data set whose class is decided only by a bright square at a fixed place, the
heat map of a trained CNN lies on the square.

Three classes: the square top left, the square bottom right, and noise alone. With two classes the network may
decide one of them by the absence of the other's square (nothing in the image to point at); the noise class
makes each square class need its own square as evidence."""
import numpy as np
import pytest
import torch
from PIL import Image

import cnnlab
from conftest import cnnlab_here

SIZE, SQUARE, MARGIN = 32, 8, 2
PLACES = {"top_left": (MARGIN, MARGIN), "bottom_right": (SIZE - MARGIN - SQUARE, SIZE - MARGIN - SQUARE),
          "noise": None}


def planted_image(rng: np.random.Generator, place: str) -> np.ndarray:
    """Noise (0..140) with a bright square (255) at the class's place: nothing else tells the classes apart."""
    image = rng.integers(0, 140, size=(SIZE, SIZE), dtype=np.uint8)
    if PLACES[place] is not None:
        r, c = PLACES[place]
        image[r:r + SQUARE, c:c + SQUARE] = 255
    return image


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """An image folder (3 classes x 80 images), a LeNet-5 trained on it, and 6 held-out images per class."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(0)
    for place in PLACES:
        (root / "data" / place).mkdir(parents=True)
        (root / "new" / place).mkdir(parents=True)
        for i in range(80):
            Image.fromarray(planted_image(rng, place)).save(root / "data" / place / f"{i}.png")
        for i in range(6):
            Image.fromarray(planted_image(rng, place)).save(root / "new" / place / f"{place}{i}.png")
    overrides = {"data.name": "imagefolder", "data.root": str(root / "data"), "data.val_size": 0.15,
                 "data.test_size": 0.15, "model.name": "lenet5", "model.activation": "relu", "model.pooling": "max",
                 "optim.name": "adam", "optim.lr": 0.003, "train.epochs": 8, "train.batch_size": 16,
                 "train.threads": 1, "train.progress": False, "train.precision": "fp32"}
    run = cnnlab.train({}, overrides, out=root / "run", report=False)
    assert run.summary["test"]["accuracy"] == 1.0  # the square decides, and the network found it
    return root, run


def test_grad_cam_mass_lies_on_the_planted_square(planted, tmp_path):
    from cnnlab.inference.explain import grad_cam

    root, run = planted
    loaded = cnnlab.load(run.dir)
    for index, place in enumerate(loaded.classes):
        if PLACES[place] is None:
            continue
        files = sorted((root / "new" / place).glob("*.png"))
        x = loaded.transform.batch(torch.stack([loaded.transform.read(f) for f in files]))
        cams, out = grad_cam(loaded.model, x, output_kind=loaded.output_kind)
        assert (out.argmax(1) == index).all()
        r, c = PLACES[place]
        region = np.zeros((SIZE, SIZE), bool)
        region[max(0, r - 4):r + SQUARE + 4, max(0, c - 4):c + SQUARE + 4] = True  # the square and 4 px around
        mass = cams.numpy()
        share = mass[:, region].sum(1) / mass.reshape(len(mass), -1).sum(1)
        assert share.mean() > 0.5, (place, share)  # the region is 16 % of the image


def test_explain_command_writes_one_overlay_per_image(planted, tmp_path):
    root, run = planted
    out = tmp_path / "cams"
    assert cnnlab_here("explain", run.dir, root / "new" / "top_left", "--out", out) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"top_left{i}.gradcam.png" for i in range(6)]
    assert Image.open(out / written[0]).size[0] > 2 * SIZE
    rows = cnnlab.explain(run.dir, [root / "new" / "bottom_right" / "bottom_right0.png"], out=tmp_path / "api",
                          target="top_left")
    assert rows[0]["class"] == "bottom_right" and rows[0]["explained"] == "top_left"


def test_explain_refuses_bad_input(planted, tmp_path, capsys):
    root, run = planted
    assert cnnlab_here("explain", run.dir, root / "new", "--class", "nope", "--out", tmp_path / "x") == 2
    assert "--class (target) 'nope': not a class" in capsys.readouterr().err
    assert cnnlab_here("explain", tmp_path / "no_run", root / "new") == 2
    assert not (tmp_path / "x").exists()


def test_the_reports_mistakes_get_their_grad_cam_pictures(tmp_path, data_root):
    from conftest import tiny_overrides

    run = cnnlab.train({}, tiny_overrides(**{"train.epochs": 0.3, "train.threads": 1}), out=tmp_path / "run")
    mistakes = torch.load(run.dir / "misclassified.pt", weights_only=True)
    k = len(mistakes["images"])
    assert k > 0 and mistakes["cam_images"].shape == (k, 3, 28, 28) and mistakes["cam_images"].dtype == torch.uint8
    # the picture is the image under its heat map: not the grey image itself
    grey = mistakes["images"].expand(-1, 3, -1, -1).int()
    assert (mistakes["cam_images"].int() - grey).abs().float().mean() > 10
    page = (run.dir / "report.html").read_text()
    assert 'id="img-misclassified-cam"' in page and 'id="img-misclassified"' in page
