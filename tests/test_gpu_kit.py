"""The GPU kit (benchmarks/gpu_kit): build it for this Python, then run its "there" half with --quick
in a fresh virtual environment that sees only what a borrowed GPU machine brings (torch, torchvision,
numpy, scipy, matplotlib, ... and their own dependencies, linked from this environment): a wheel the
kit forgot (pydantic, torchinfo, ...) fails the run, as it would on the GPU machine."""
import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / "benchmarks" / "gpu_kit"
# what the GPU machines were seen to hold (../shared/device-data/README.md), their dependencies come along
GPU_MACHINE_HAS = ("torch", "torchvision", "numpy", "scipy", "matplotlib", "jinja2", "pyyaml", "tqdm", "pillow",
                   "onnx", "onnxruntime", "tensorboard")


def closure(names) -> list[metadata.Distribution]:
    """The installed distributions ``names`` need, with their dependencies (extras left out)."""
    seen, todo, dists = set(), list(names), []
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # a platform-specific dependency not installed here
        dists.append(dist)
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return dists


def gpu_machine_packages(folder: Path) -> list[str]:
    """A folder of links to what a GPU machine has: each distribution's top-level files and folders."""
    folder.mkdir()
    dists = closure(GPU_MACHINE_HAS)
    for dist in dists:
        for entry in dist.files or []:
            top = entry.parts[0]
            if top == ".." or (folder / top).exists():
                continue
            source = Path(dist.locate_file(top))
            if source.exists():
                (folder / top).symlink_to(source)
    return sorted(d.metadata["Name"] for d in dists)


@pytest.mark.slow
def test_the_kit_runs_on_a_machine_that_has_only_what_a_gpu_machine_has(tmp_path):
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    kit = tmp_path / "kit"
    built = subprocess.run([sys.executable, KIT / "prepare.py", "--python-version", version, "--out", kit,
                            "--venv", sys.prefix], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "of the 64.0 MiB a GPU machine accepts" in built.stdout
    assert sorted(p.name for p in (kit / "data" / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz"]

    # the "GPU machine": a fresh venv whose only packages beyond the standard library are those links
    names = gpu_machine_packages(tmp_path / "gpu-machine-packages")
    assert "torch" in names and "pydantic" not in names and "torchinfo" not in names and "pytest" not in names
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (Path(site) / "gpu_machine.pth").write_text(str(tmp_path / "gpu-machine-packages") + "\n")
    # nothing of this machine's set-up: no PYTHONPATH, no data path, no pip configuration (its index, find-links and
    # constraints): the install must work from the kit's wheels alone, as there
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "CNNLAB_DATA", "CNNLAB_CACHE") and not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    bare = subprocess.run([python, "-c", "import torch, numpy, matplotlib, yaml\nimport pydantic"], env=env,
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "No module named 'pydantic'" in bare.stderr, bare.stderr  # torch imports, pydantic is not there

    out = tmp_path / "out"
    there = subprocess.run([python, KIT / "there.py", "--kit", kit, "--out", out, "--quick"], env=env, cwd=ROOT,
                           capture_output=True, text=True, timeout=900)
    assert there.returncode == 0, there.stdout[-5000:] + there.stderr[-3000:]
    table = (out / "gpu_kit_table.md").read_text()
    assert re.search(r"^\| speed run 99\.0 % .* \| fp32 \| [\d.]+ s \| [\d.]+ s \| [\d,]+ \| 9\d\.\d\d % \|$",
                     table, re.M), table
    assert "benchmarks/gpu_check.py --quick: exit 0 (every check ok or skipped)" in table
    assert re.search(r"^two workers, two GPUs\s+ok", table, re.M), table
    assert "FAIL" not in table
    for log in ("install", "environment", "data_check", "gpu_check", "train_mnist_99_0_2s_fp32"):
        assert (out / f"{log}.log").is_file()
    assert "Successfully installed" in (out / "install.log").read_text()  # by pip --no-index, not by unzipping
    environment = (out / "environment.log").read_text()
    assert f'"pydantic_from": "{kit / "site" / "pydantic"}' in environment  # from the kit's wheels
    assert f'"cnnlab_from": "{ROOT / "cnnlab"}' in environment  # the project tree, as it travels

    # --quick leaves out gpu_check.py's test row (pytest on its CUDA-relevant tests): at least they import there,
    # with the kit's pytest and its MNIST-only data root
    tests = ast.literal_eval(re.search(r"^TESTS = (\[.*?\])$", (ROOT / "benchmarks" / "gpu_check.py").read_text(),
                                       re.M | re.S).group(1))
    env_there = dict(env, PYTHONPATH=f"{kit / 'site'}{os.pathsep}{ROOT}", CNNLAB_DATA=str(kit / "data"))
    collected = subprocess.run([python, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *tests],
                               env=env_there, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert re.search(r"^(\d+/)?\d+ tests collected", collected.stdout, re.M), collected.stdout[-3000:]
