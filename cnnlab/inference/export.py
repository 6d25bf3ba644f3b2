"""A run's best checkpoint as a file other tools run: ONNX or TorchScript, with its preprocessing inside.

The exported network is the run's (the EMA weights when the run kept an average), in eval
mode; it takes float32 ``[N, C, H, W]`` input already normalised (pixels / 255, then
``(x - mean) / std`` per channel) and returns what the model returns (``output_kind``:
logits, log-probabilities or probabilities), batch size free. The file's metadata carries
what is needed to feed it: ``classes``, ``input_shape``, ``mean``, ``std``, ``output_kind``
and the whole preprocessing record as JSON under ``cnnlab.preprocess`` — ONNX
``metadata_props``, TorchScript ``_extra_files["cnnlab.json"]``. ONNX needs the ``export``
extra (``pip install 'cnnlab[export]'``: onnx, onnxscript, onnxruntime).
"""
from __future__ import annotations

import contextlib
import io
import json
import tempfile
import warnings
from pathlib import Path

import torch

from cnnlab import runs
from cnnlab.config.schema import ConfigError
from cnnlab.outputs import check_out_file
from cnnlab.inference.load import LoadedRun, load_run
from cnnlab.version import __version__

FORMATS = ("onnx", "torchscript")
TORCHSCRIPT_EXTRA = "cnnlab.json"


def metadata(run: LoadedRun) -> dict[str, str]:
    """The exported file's metadata: every value a string (ONNX metadata_props take strings)."""
    r = run.preprocess
    return {
        "classes": json.dumps(list(run.classes)), "input_shape": json.dumps(list(run.input_shape)),
        "mean": json.dumps(r["mean"]), "std": json.dumps(r["std"]), "output_kind": run.output_kind,
        "input": "float32 [N, C, H, W]: pixels / 255, then (x - mean) / std per channel",
        "cnnlab.preprocess": json.dumps({**r, "output_kind": run.output_kind}),
        "cnnlab.model": run.config.model.name, "cnnlab.run": str(run.run_dir), "cnnlab.version": __version__,
    }


def export(run_dir: str | Path, fmt: str, out: str | Path, checkpoint: str = "best.pt") -> Path:
    """Write ``run_dir``'s checkpoint to ``out`` as ``fmt`` (onnx | torchscript); returns the path."""
    if fmt not in FORMATS:
        raise ConfigError(f"format: {fmt!r}; use one of {', '.join(FORMATS)}")
    check_out_file(out)  # never a folder, nor a file a run wrote (RUN/best.pt): refused before any work
    # the network as the format holds it: fp32 weights in the standard layout, whatever the run computed in
    run = load_run(run_dir, checkpoint, overrides={"train.precision": "fp32", "train.channels_last": False})
    out = Path(out)
    example = torch.randn(2, *run.input_shape)
    data = to_onnx(run, example) if fmt == "onnx" else to_torchscript(run, example)
    runs.write_bytes(out, data)
    return out


def to_torchscript(run: LoadedRun, example: torch.Tensor) -> bytes:
    """Traced (not scripted: every model in the zoo traces; control flow does not depend on the data)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        traced = torch.jit.trace(run.model, example, check_trace=False)
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata(run))})
    return buf.getvalue()


def to_onnx(run: LoadedRun, example: torch.Tensor) -> bytes:
    """The torch.export-based exporter when onnxscript is installed (torch's default), else the
    TorchScript-based one; a free batch dimension either way; metadata added with the onnx package."""
    try:
        import onnx
    except ImportError:
        raise ConfigError("format onnx needs the onnx package: pip install 'cnnlab[export]'") from None
    try:
        import onnxscript  # noqa: F401 - the dynamo exporter needs it
        dynamo = True
    except ImportError:
        dynamo = False
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):  # the exporter prints its progress
        warnings.simplefilter("ignore")
        path = Path(tmp) / "model.onnx"
        common = {"input_names": ["input"], "output_names": ["output"]}
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(run.model, (example,), str(path), dynamo=True, external_data=False,
                              dynamic_shapes=({0: batch},), **common)
        else:
            torch.onnx.export(run.model, (example,), str(path), dynamo=False,
                              dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}}, **common)
        model = onnx.load(str(path))
    for key, value in metadata(run).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"cnnlab {run.config.model.name}: {len(run.classes)} classes, input {list(run.input_shape)}"
    return model.SerializeToString()


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata an exported file carries (either format)."""
    path = Path(path)
    if path.suffix == ".onnx":
        import onnx

        return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    files = {TORCHSCRIPT_EXTRA: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript's deprecation notice
        torch.jit.load(str(path), _extra_files=files)
    return json.loads(files[TORCHSCRIPT_EXTRA])


def max_difference(run: LoadedRun, path: str | Path, fmt: str, n: int = 4, seed: int = 0) -> float | None:
    """Largest |exported - PyTorch| output on ``n`` random inputs (None when ONNX Runtime is missing)."""
    x = torch.randn(n, *run.input_shape, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = run.model(x).float()
    if fmt == "torchscript":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = torch.jit.load(str(path))(x).float()
    else:
        try:
            import onnxruntime
        except ImportError:
            return None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    return float((got - expected).abs().max())
