"""The learning-rate range test (issue 27, item 3): LeNet-5 with Adam on MNIST gets a suggestion in the region known
to train it well, the test writes its two files and nothing else, and bad arguments exit 2 naming the option."""
import hashlib
import json

import numpy as np
import pytest

import cnnlab
from cnnlab.training.lr_find import suggest
from conftest import cnnlab_here, tiny_overrides

QUICKSTART = "recipes/quickstart_lenet5_mnist.yaml"
FAST = {"data.train_limit": 5000, "train.threads": 1, "train.progress": False, "train.precision": "fp32"}


def test_suggestion_lies_in_lenet5_adams_good_region(tmp_path):
    """Adam trains LeNet-5 on MNIST well from about 1e-4 to 1e-2 (the quick start uses 2e-3)."""
    r = cnnlab.lr_find(QUICKSTART, FAST, out=tmp_path / "lr")
    assert 1e-4 <= r.suggestion <= 1e-2, (r.suggestion, r.rule)
    assert r.rule.startswith("steepest")
    assert r.line == f"optim: {{lr: {r.suggestion:.2g}}}"
    assert "4x its minimum" in r.stopped  # it ran on into divergence, then stopped
    assert len(r.lrs) == len(r.losses) == len(r.smoothed) < 200
    ratios = np.diff(np.log(r.lrs))
    assert np.allclose(ratios, np.log(10 / 1e-7) / 199)  # geometric, 1e-7 to 10 in 200 steps
    assert r.lrs[0] == pytest.approx(1e-7) and r.losses[0] == pytest.approx(np.log(10), abs=0.15)
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["suggestion"] == r.suggestion and saved["line"] == r.line
    min10 = suggest(r.lrs, r.smoothed, "min10")[0]
    assert 1e-4 <= min10 <= 1e-2


def test_suggest_rules_on_a_made_up_curve():
    lrs = list(np.logspace(-6, 0, 61))
    x = np.log10(lrs)
    loss = 2.3 - 1.5 / (1 + np.exp(-4 * (x + 3)))  # falls fastest at 1e-3
    loss[x > -1.5] += 10 * (x[x > -1.5] + 1.5) ** 2  # rises after 10^-1.5
    lr, rule = suggest(lrs, list(loss), "steepest")
    assert lr == pytest.approx(1e-3, rel=0.05) and rule.startswith("steepest")
    lr, rule = suggest(lrs, list(loss), "min10")
    i_min = int(np.argmin(loss))
    assert lr == pytest.approx(lrs[i_min] / 10) and rule.startswith("min10")
    lr, rule = suggest(lrs[:5], list(np.linspace(1, 5, 5)), "steepest")  # lowest at the start: no slope
    assert lr == pytest.approx(lrs[0] / 10) and rule.startswith("min10")


def test_writes_its_two_files_and_leaves_a_run_folder_as_it_was(tmp_path, data_root):
    run = cnnlab.train({}, tiny_overrides(**{"train.epochs": 0.2}), out=tmp_path / "run", report=False)
    before = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.dir.iterdir() if p.is_file()}
    args = ["lr-find", QUICKSTART, *[f"{k}={v}" for k, v in FAST.items()], "--steps", "30"]
    assert cnnlab_here(*args, "--out", run.dir) == 0
    after = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in run.dir.iterdir() if p.is_file()}
    assert set(after) - set(before) == {"lr_find.json", "lr_find.png"}
    assert {k: after[k] for k in before} == before  # no checkpoint, summary or curve touched
    assert cnnlab_here(*args, "--out", tmp_path / "fresh") == 0
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == ["lr_find.json", "lr_find.png"]


@pytest.mark.parametrize("args, words", [
    (["--start-lr", "0"], "--start-lr (start_lr): 0.0 is not allowed"),
    (["--start-lr", "1", "--end-lr", "0.1"], "below --end-lr"),
    (["--steps", "3"], "--steps (steps): 3 is not allowed"),
    (["--smooth", "1"], "--smooth (smooth): 1.0 is not allowed"),
    (["--diverge", "0.5"], "--diverge (diverge)"),
    (["--end-lr", "inf"], "give a finite number"),
    (["optim.lr=-1"], "optim.lr"),
])
def test_bad_arguments_exit_2_naming_them(tmp_path, capsys, args, words):
    assert cnnlab_here("lr-find", QUICKSTART, *args, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert words in err and err.startswith("cnnlab: error:")
    assert not (tmp_path / "o").exists()  # refused before any work


def test_bad_rule_and_missing_study_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cnnlab_here("lr-find", QUICKSTART, "--rule", "valley")
    assert e.value.code == 2 and "invalid choice: 'valley'" in capsys.readouterr().err
    assert cnnlab_here("lr-find") == 2
    assert "needs a study file" in capsys.readouterr().err
    with pytest.raises(cnnlab.api.ConfigError, match="rule"):
        cnnlab.lr_find(QUICKSTART, out=tmp_path / "x", rule="valley")
