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
    from cnnlab.config import config_diff_lines
    from cnnlab.loader import load_config

    lines = config_diff_lines(load_config(None, {"optim.lr": 0.01, "model.widths": [6, 16, 120]}))
    assert lines[1:] == ["  model.widths: [6, 16, 120]", "  optim.lr: 0.01"] and "config.yaml" in lines[0]
