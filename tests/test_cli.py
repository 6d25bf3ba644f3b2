import json
import os
import subprocess
import sys

import pytest


def cnnlab(*args, cwd=None):
    env = dict(os.environ, CNNLAB_NO_REEXEC="1")
    return subprocess.run([sys.executable, "-m", "cnnlab.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


@pytest.mark.parametrize("args, needle", [
    (["optim.lr=-0.1"], "optim.lr"),
    (["model.name=nope"], "model.name"),
    (["train.batch_size=0"], "train.batch_size"),
    (["train.mlflow=ftp://host"], "train.mlflow"),
    (["nonsense"], "key=value"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, args, needle):
    out = tmp_path / "run"
    r = cnnlab("train", "recipes/quickstart_lenet5_mnist.yaml", *args, "--out", str(out))
    assert r.returncode == 2, r.stderr
    assert needle in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_summary_json_for_lenet5():
    r = cnnlab("summary", "lenet5", "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["params_total"] == 61706 and info["params_trainable"] == 61706
    assert info["flops_per_image"] > 0 and info["layers"]


def test_summary_table_with_override():
    r = cnnlab("summary", "lenet5", "model.activation=relu", "--dataset", "cifar10")
    assert r.returncode == 0, r.stderr
    assert "Conv2d" in r.stdout


def test_data_check_on_shared_data(data_root):
    r = cnnlab("data", "check", "--root", str(data_root))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mnist" in r.stdout


def test_train_and_eval_commands(tmp_path, data_root):
    out = tmp_path / "run"
    r = cnnlab("train", "recipes/quickstart_lenet5_mnist.yaml", "data.train_limit=1000", "data.val_size=500",
               "train.epochs=1", "train.progress=false", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "test, per class" in r.stdout and "status: completed" in r.stdout
    r = cnnlab("eval", str(out), "--split", "val,test", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    summary = json.loads((out / "summary.json").read_text())
    assert result["test"]["accuracy"] == summary["test"]["accuracy"]


def test_version_and_help_text_on_every_option():
    r = cnnlab("--version")
    assert r.returncode == 0 and r.stdout.startswith("cnnlab ")
    from cnnlab.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    missing = [f"{name} {a.dest}" for name, p in sub.choices.items() for a in p._actions
               if a.dest != "help" and not a.help]
    assert not missing, f"options without help text: {missing}"


def test_config_printed_as_differences_unless_verbose():
    from cnnlab.config.schema import config_diff_lines
    from cnnlab.config.load import load_config

    lines = config_diff_lines(load_config(None, {"optim.lr": 0.01, "model.widths": [6, 16, 120]}))
    assert lines[1:] == ["  model.widths: [6, 16, 120]", "  optim.lr: 0.01"] and "config.yaml" in lines[0]


# ----------------------------------------------------------------------------- discovering options (issue 25, 11)


def test_models_lists_every_registered_model_with_its_parameters_input_and_options():
    import importlib

    import torch

    from cnnlab.registry import MODELS

    importlib.import_module("cnnlab.models")  # fills the registry

    r = cnnlab("models", "--json")
    assert r.returncode == 0, r.stderr
    entries = {e["name"]: e for e in json.loads(r.stdout)}
    assert sorted(entries) == MODELS.names()
    lenet = entries["lenet5"]
    assert lenet["family"] == "lenet" and lenet["parameters"] == 61706 and lenet["input"] == [1, 28, 28]
    options = {o["name"]: o for o in lenet["options"]}
    assert set(options) == set(MODELS.options("lenet5"))
    assert options["activation"]["default"] == "tanh" and "relu" in options["activation"]["choices"]
    assert options["pooling"]["choices"] == ["avg", "max"] and options["widths"]["default"] == [6, 16, 120]
    for name in ("resnet20", "mlp", "lenet5_cifar"):  # counted the way a real network of that input has them
        c, h, w = entries[name]["input"]
        model = MODELS.get(name)(num_classes=10, in_channels=c)
        model.eval()(torch.zeros(1, c, h, w))
        assert entries[name]["parameters"] == sum(p.numel() for p in model.parameters()), name
    table = cnnlab("models").stdout
    assert "family resnet_cifar" in table and "resnet20" in table and "269,722 parameters" in table
    assert "stem=imagenet [imagenet|cifar]" in table


def _fields(model, prefix=""):
    """Every leaf field of the typed config, walked here independently of cnnlab.catalog."""
    from pydantic import BaseModel

    out = {}
    for key, field in model.model_fields.items():
        inner = [a for a in (field.annotation, *getattr(field.annotation, "__args__", ()))
                 if isinstance(a, type) and issubclass(a, BaseModel)]
        if inner:
            out.update(_fields(inner[0], f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = field
    return out


def test_options_lists_every_config_field_with_type_default_and_help():
    from cnnlab.config.schema import Config

    r = cnnlab("options", "--json")
    assert r.returncode == 0, r.stderr
    listed = {e["key"]: e for e in json.loads(r.stdout)}
    fields = _fields(Config)
    assert set(fields) <= set(listed), sorted(set(fields) - set(listed))
    defaults = Config().to_dict()
    for key in fields:
        if key.startswith("train.sweep.") or key == "optim.weight_decay":
            continue  # set by cnnlab sweep: no default; null, resolved to the optimizer's own at validation
        node = defaults
        for part in key.split("."):
            node = node[part]
        assert listed[key]["default"] == node, (key, listed[key]["default"], node)
    assert listed["train.epochs"]["type"] == "float" and listed["train.epochs"]["range"] == "≥ 0, ≤ 10000"
    assert listed["train.monitor"]["type"] == "one of: val_accuracy | val_loss"
    assert listed["train.channels_last"]["type"] == "bool | null"
    assert "without improvement" in listed["train.early_stopping.patience"]["help"]  # the comment in config.py
    assert "airbench94" in listed["train.lookahead"]["help"]  # the field's description
    assert "lenet5" in listed["model.name"]["help"] and "adamw" in listed["optim.name"]["help"]
    assert listed["optim.weight_decay"]["default"] is None and "0.01" in listed["optim.weight_decay"]["help"]
    one = cnnlab("options", "sched")
    assert one.returncode == 0 and "sched.warmup_steps  (int; default 0; ≥ 0)" in one.stdout
    assert "train.epochs" not in one.stdout


def test_options_of_an_unknown_section_exits_2_naming_the_sections():
    r = cnnlab("options", "trian")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "unknown section 'trian'" in r.stderr and "train.early_stopping" in r.stderr


def test_train_help_points_to_the_options():
    r = cnnlab("train", "--help")
    assert r.returncode == 0 and "cnnlab options" in r.stdout and "cnnlab models" in r.stdout
