"""benchmarks/gpu_check.py's CPU path (what a machine without CUDA runs): it must finish, print
its table and exit 0, so the script a maintainer runs on a GPU is known to work up to the GPU."""
import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine run the script itself")
def test_the_cpu_path_runs_and_exits_0(capsys, data_root, tmp_path):
    assert load().main(["--quick", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out
    for row in ("quick start fp32 + EMA", "SIGINT + resume (cpu)", "224-px ResNet-50 in 8 GB", "TF32 for fp32 (auto)",
                "compiled step"):
        assert row in out
    assert "off (no CUDA device); flags restored" in out  # TF32: no GPU, nothing to turn on
    assert "FAIL" not in out
