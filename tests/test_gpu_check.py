"""benchmarks/gpu_check.py's CPU path (what a machine without CUDA runs): it must finish, print
its table and exit 0, so the script a maintainer runs on a GPU is known to work up to the GPU."""
import importlib
import re
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load():
    # Imported by name from a folder on sys.path (not from a file spec): the two-worker row sends one of
    # the module's functions to spawned workers, which import the module by that name (they get sys.path).
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    return importlib.import_module("gpu_check")


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine run the script itself")
def test_the_cpu_path_runs_and_exits_0(capsys, data_root, tmp_path):
    assert load().main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out
    for row in ("quick start fp32 + EMA", "SIGINT + resume (cpu)", "224-px ResNet-50 in 8 GB", "TF32 for fp32 (auto)",
                "compiled step"):
        assert row in out
    assert "off (no CUDA device); flags restored" in out  # TF32: no GPU, nothing to turn on
    # the two local sweep workers, started by the sweep's own pool, get one (made-up) GPU each
    assert re.search(r"^two workers, two GPUs\s+ok\s+workers see CUDA_VISIBLE_DEVICES \['0', '1'\] "
                     r"\(assignment only", out, re.M), out
    assert re.search(r"^224-px ResNet-50 in 8 GB\s+skipped\s+no CUDA device", out, re.M), out
    assert "FAIL" not in out


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine run the script itself")
def test_every_row_a_cpu_can_run_passes_without_quick(capsys, data_root, tmp_path):
    # what a maintainer runs first on a GPU, run in full up to the GPU: the compiled step and the test row too
    assert load().main(["--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^compiled step\s+ok", out, re.M) and re.search(r"^CUDA-relevant tests\s+ok", out, re.M), out
    skipped = re.findall(r"^(.+?)\s+skipped\s+(.+)$", out, re.M)
    assert skipped and all(why.startswith("no CUDA device") for _, why in skipped), skipped
    assert "FAIL" not in out


def test_without_mnist_it_stops_at_once_with_where_it_looked(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(tmp_path / "elsewhere"))  # main's --data writes it: undone after
    assert load().main(["--quick", "--data", str(tmp_path / "nothing")]) == 2
    captured = capsys.readouterr()
    assert "quick start" not in captured.out  # no check ran
    err = " ".join(captured.err.split())
    assert f"Looked in {tmp_path / 'nothing' / 'MNIST' / 'raw'}" in err
    assert "none is there" in err
    assert "--data DIR" in err and "CNNLAB_DATA=DIR" in err
