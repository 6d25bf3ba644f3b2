"""cnnlab export: ONNX (through onnxruntime) and TorchScript give PyTorch's outputs, with the preprocessing inside."""
import json
import os
import subprocess
import sys

import pytest
import torch


def test_torchscript_export_matches_and_carries_metadata(tiny_run, tmp_path):
    from cnnlab.inference.export import export, max_difference, read_metadata
    from cnnlab.inference.load import load_run

    path = export(tiny_run.dir, "torchscript", tmp_path / "m.pt")
    run = load_run(tiny_run.dir)
    meta = read_metadata(path)
    assert json.loads(meta["classes"]) == run.classes and json.loads(meta["input_shape"]) == [1, 28, 28]
    assert json.loads(meta["cnnlab.preprocess"])["mean"] == run.preprocess["mean"]
    x = torch.randn(5, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), run.model(x), atol=1e-5)
    assert max_difference(run, path, "torchscript") < 1e-5


def test_onnx_export_matches_pytorch_through_onnxruntime(tiny_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    env = dict(os.environ, CNNLAB_NO_REEXEC="1")
    out = tmp_path / "m.onnx"
    r = subprocess.run([sys.executable, "-m", "cnnlab.cli", "export", str(tiny_run.dir), "--format", "onnx",
                        "--out", str(out)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "max |difference|" in r.stdout
    from cnnlab.inference.export import read_metadata
    from cnnlab.inference.load import load_run

    run = load_run(tiny_run.dir)
    meta = read_metadata(out)
    assert json.loads(meta["classes"]) == run.classes and meta["output_kind"] == run.output_kind
    assert json.loads(meta["std"]) == run.preprocess["std"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 7):  # the batch dimension is free
        x = torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(n))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
        with torch.no_grad():
            expected = run.model(x).numpy()
        assert got.shape == expected.shape and abs(got - expected).max() < 1e-4


def test_export_of_an_ema_run_uses_the_averaged_weights(tmp_path, data_root):
    import cnnlab
    from cnnlab import runs
    from cnnlab.inference.export import export
    from conftest import tiny_overrides

    run = cnnlab.train({"name": "ema"}, tiny_overrides(**{"train.ema": 0.9, "train.epochs": 0.3}),
                       out=tmp_path / "ema", report=False)
    state = runs.load_checkpoint(run.dir / "best.pt")
    loaded = cnnlab.load(run.dir)
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in ema.items())
    assert not all(torch.equal(state["model"][k], v) for k, v in ema.items())
    path = export(run.dir, "torchscript", tmp_path / "ema.pt")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(torch.jit.load(str(path))(x), loaded.model(x), atol=1e-5)


def test_export_refuses_unknown_format(tiny_run, tmp_path):
    from cnnlab.config.schema import ConfigError
    from cnnlab.inference.export import export

    with pytest.raises(ConfigError, match="format"):
        export(tiny_run.dir, "tflite", tmp_path / "x")
