"""Shared test set-up: where the real data sets are, and a tiny-run config factory."""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# The shared offline copies sit beside the project (../shared/datasets); CI sets CNNLAB_DATA too.
DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets"
os.environ.setdefault("CNNLAB_DATA", str(DEFAULT_DATA))
# The README's CNNLAB_DATA is relative (../shared/datasets, from the project's root): made absolute once,
# from where pytest was started, so tests that change folder, link to the data or start workers elsewhere
# read the same files (.ci/run uses the relative path, as a newcomer does).
os.environ["CNNLAB_DATA"] = str(Path(os.environ["CNNLAB_DATA"]).expanduser().resolve())
# Decoded-image caches of the test session go to a folder of their own, not ~/.cache/cnnlab.
os.environ["CNNLAB_CACHE"] = tempfile.mkdtemp(prefix="cnnlab-test-cache-")
atexit.register(shutil.rmtree, os.environ["CNNLAB_CACHE"], True)


@pytest.fixture(scope="session")
def data_root() -> Path:
    root = Path(os.environ["CNNLAB_DATA"])
    if not (root / "MNIST" / "raw").is_dir():
        pytest.fail(f"real data not found at {root}: set CNNLAB_DATA to the shared datasets folder")
    return root


# Precision is a tested axis, not an accident of the CPU: `precision: auto` means bf16 on a CPU with native
# bf16 and fp32 on one without, so the tiny runs fix fp32, and the tests whose outcome depends on precision
# take the `precision` fixture and run once per entry here on every machine (bf16 and fp16 autocast run on
# any x86 CPU, emulated and slower where the CPU lacks them; fp16 with its loss scaler, as on a GPU).
PRECISIONS = ("fp32", "bf16", "fp16")


def tiny_overrides(**extra) -> dict:
    """A run of a few seconds on real MNIST: 1,000 training images, 500 for validation, in fp32."""
    base = {
        "data.name": "mnist", "data.train_limit": 1000, "data.val_size": 500,
        "model.name": "lenet5", "optim.name": "adam", "optim.lr": 0.003,
        "train.epochs": 1, "train.batch_size": 100, "train.progress": False, "train.precision": "fp32",
    }
    base.update(extra)
    return base


@pytest.fixture(params=PRECISIONS)
def precision(request) -> str:
    """Each of :data:`PRECISIONS` in turn (a test taking it runs once per precision)."""
    return request.param


@pytest.fixture
def tiny_config():
    from cnnlab.config.load import load_config

    def make(**extra):
        return load_config(None, tiny_overrides(**extra))

    return make


def cnnlab_here(*args) -> int:
    """``cnnlab ARGS`` in this process (its exit code); torch's thread count, which a run may set, put back."""
    import torch

    from cnnlab import cli

    threads = torch.get_num_threads()
    try:
        return cli.main([str(a) for a in args])
    finally:
        torch.set_num_threads(threads)


def print_summary_line(request, line: str, cache_key: str | None = None, record: dict | None = None) -> None:
    """Print one line to the terminal past pytest's capture (tests that report figures they counted); with
    ``cache_key``, also keep ``record`` in pytest's cache under it (absent with -p no:cacheprovider)."""
    if cache_key is not None and getattr(request.config, "cache", None) is not None:
        request.config.cache.set(cache_key, record)
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            reporter.write_line(line)
    else:
        print(line)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_root):
    """One tiny finished MNIST run (a few seconds), trained once per session through the Python API."""
    import cnnlab

    out = tmp_path_factory.mktemp("tiny") / "run"
    run = cnnlab.train({"name": "tiny"}, tiny_overrides(), out=out, report=False)
    assert run.status == "completed"
    return run


def write_image_folder(root: Path, classes: list[str], per_class: int = 3, size=(28, 28), seed: int = 0,
                       modes=("L",)) -> list[Path]:
    """PNG and JPEG files under root/<class>/ (mixed modes when asked); returns the files."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for ci, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            mode = modes[(ci + i) % len(modes)]
            shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], len(mode))
            img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode)
            path = root / name / (f"{i}.png" if i % 2 == 0 or mode == "RGBA" else f"{i}.jpg")
            img.save(path)
            files.append(path)
    return files
