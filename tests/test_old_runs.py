"""Run folders made before the package was reorganised keep working.

``tests/fixtures/run_made_by_c4ecccc`` is a real run (linear on 300 MNIST images, fp32) written by
cnnlab at commit c4ecccc, the last commit with the flat package: its checkpoints, config.yaml and
summary.json are that code's. Today's code must load it, predict with it, score it and resume it.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from cnnlab import cli, runs

OLD_RUN = Path(__file__).parent / "fixtures" / "run_made_by_c4ecccc"


def test_an_old_run_loads_and_predicts_what_it_scored(tmp_path):
    import cnnlab

    m = cnnlab.load(OLD_RUN)
    assert m.input_shape == (1, 28, 28) and len(m.classes) == 10
    digits = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 10:18, 12:16] = 255  # a bar: the same input gives the same answer, and a valid one
    first, second = m.predict(digits), m.predict(digits)
    assert first == second and all(p["class"] in m.classes for p in first)


def test_an_old_run_is_scored_again_with_its_saved_accuracy(tmp_path, capsys):
    saved = json.loads((OLD_RUN / "summary.json").read_text())["test"]["accuracy"]
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    assert cli.main(["eval", str(run), "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert abs(scored["test"]["accuracy"] - saved) < 1e-9, (scored["test"]["accuracy"], saved)


def test_an_old_run_resumes_for_another_epoch(tmp_path, capsys):
    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    assert cli.main(["train", "--resume", str(run), "train.epochs=2"]) == 0, capsys.readouterr()
    summary = runs.read_summary(run)
    assert summary["status"] == "completed" and summary["resumed"], summary["status"]
    epochs = [r.get("epoch") for r in runs.read_jsonl(run / "metrics.jsonl")]
    assert max(e for e in epochs if e is not None) >= 2, epochs


def test_an_old_run_exports_to_onnx_and_predicts_as_load_does(tmp_path):
    """ONNX export of the old run (through onnxruntime) gives cnnlab.load(...).predict's classes and probabilities."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import cnnlab
    from cnnlab.inference.export import export, read_metadata
    from cnnlab.inference.load import to_probs

    run = tmp_path / "old"
    shutil.copytree(OLD_RUN, run)
    m = cnnlab.load(run)
    path = export(run, "onnx", tmp_path / "old.onnx")
    meta = read_metadata(path)
    assert json.loads(meta["classes"]) == m.classes and json.loads(meta["input_shape"]) == [1, 28, 28]
    assert json.loads(meta["mean"]) == m.preprocess["mean"] and json.loads(meta["std"]) == m.preprocess["std"]

    images = torch.randint(0, 256, (6, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[:3, 10:18, 12:16] = 255  # some bars over the noise: not every input alike
    expected = m.predict(list(images), top_k=3)
    x = torch.stack([m.transform(img) for img in images])  # what predict feeds the network: float [N, C, H, W]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs = to_probs(torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]),
                     meta["output_kind"])
    for p, want in zip(probs, expected):
        top = p.topk(3)
        assert [m.classes[i] for i in top.indices] == [c for c, _ in want["top"]], (p, want)
        assert abs(float(top.values[0]) - want["probability"]) < 1e-5, (float(top.values[0]), want)
