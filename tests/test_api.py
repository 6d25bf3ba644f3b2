"""The Python API: import cheapness, train -> Run, load -> predict, errors naming fields."""
import subprocess
import sys

import pytest
import torch
from PIL import Image


def test_import_is_cheap_and_lists_the_api():
    code = "import sys, cnnlab; print('torch' in sys.modules, sorted(set(dir(cnnlab)) & {'train','sweep','compare','load'}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False ['compare', 'load', 'sweep', 'train']", r.stderr


def test_the_api_is_plain_functions_and_the_loop_lives_in_training():
    import inspect

    import cnnlab
    from cnnlab import api
    from cnnlab.training import loop

    for name in ("train", "sweep", "compare", "load"):
        assert inspect.isfunction(getattr(cnnlab, name)) and getattr(cnnlab, name) is getattr(api, name)
    assert callable(loop.run) and not hasattr(cnnlab, "training") or not callable(cnnlab.training)


def test_train_returns_a_run_and_load_predicts(tiny_run, tmp_path):
    import cnnlab

    assert tiny_run.status == "completed" and 0 < tiny_run.test_accuracy <= 1 and tiny_run.metrics
    m = cnnlab.load(tiny_run.dir)
    assert isinstance(m.model, torch.nn.Module) and not m.model.training
    assert m.input_shape == (1, 28, 28) and len(m.classes) == 10
    Image.new("RGB", (50, 40), (255, 255, 255)).save(tmp_path / "white.png")
    x = m.transform(tmp_path / "white.png")
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    rows = m.predict([tmp_path / "white.png"], top_k=2)
    assert rows[0]["file"].endswith("white.png") and len(rows[0]["top"]) == 2 and rows[0]["class"] in m.classes
    assert sum(p for _, p in rows[0]["top"]) <= 1.0 + 1e-6
    assert tiny_run.load().classes == m.classes


def test_train_with_config_object_and_finish_run(tmp_path, data_root):
    import cnnlab
    from cnnlab.config.load import load_config
    from conftest import tiny_overrides

    cfg = load_config(None, tiny_overrides(**{"train.epochs": 0.2}))
    run = cnnlab.train(cfg, {"optim.lr": 0.001}, out=tmp_path / "r")
    assert run.config["optim"]["lr"] == 0.001 and (run.dir / "report.html").exists()
    assert "findings" in run.summary


def test_api_errors_name_fields_not_flags(tiny_run, tmp_path):
    import cnnlab
    from cnnlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match="optim.lr"):
        cnnlab.train({"name": "x"}, {"optim.lr": -1}, out=tmp_path / "bad")
    with pytest.raises(ConfigError) as e:
        cnnlab.train({"name": "x"}, {"data.train_limit": 100}, out=tiny_run.dir)
    assert "force=True" in str(e.value) and "--" not in str(e.value)
    with pytest.raises(ConfigError, match="study"):
        cnnlab.train(42)
    with pytest.raises(ConfigError, match="no such run folder"):
        cnnlab.load(tmp_path / "missing")


@pytest.mark.parametrize("overrides,out,words", [
    ({1: 2}, "r", "overrides: keys must be dotted setting names"),
    ("optim.lr=0.01", "r", "overrides: expected a dict"),
    ([("optim.lr", 0.01)], "r", "overrides: expected a dict"),
    (None, 123, "out: expected a folder path"),
])
def test_wrong_kinds_of_api_arguments_are_named_before_any_work(tmp_path, overrides, out, words):
    import cnnlab
    from cnnlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match=words):
        cnnlab.train({"name": "x"}, overrides, out=tmp_path / out if isinstance(out, str) else out)
    assert not (tmp_path / "r").exists()
