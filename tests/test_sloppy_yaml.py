"""Sloppy study and sweep files stop before any work with exit code 2 and one message naming the field:
a key given twice at any depth (issue 13, class 5), a name that would leave its folder (class 6), and a
schedule that cannot do what it says over the run (class 10).

Each hostile input goes through the real ``cnnlab train`` / ``cnnlab sweep`` (in process, via
``cnnlab.cli.main``); how many were tried and refused is printed at the end of the module.
"""
from __future__ import annotations

import random
import string

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnnlab import cli
from cnnlab.config.schema import ConfigError, check_name, load_yaml_text, name_problem, parse_value
from cnnlab.config.load import load_config
from conftest import print_summary_line

COUNTS: dict[str, int] = {}
TRIED = {"n": 0, "plain": 0}  # plain: random names that are plain, accepted (and checked to stay inside)


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    line = (f"sloppy YAML, names and schedules: {TRIED['n'] - TRIED['plain']} hostile inputs tried, "
            f"{sum(COUNTS.values())} refused or warned ({', '.join(f'{k} {v}' for k, v in sorted(COUNTS.items()))}); "
            f"{TRIED['plain']} random plain names accepted")
    print_summary_line(request, line)


def refused(kind: str, argv: list[str], capsys, *needles: str) -> str:
    """Run the CLI; it must exit 2 with one message holding every needle, and write no run folder."""
    TRIED["n"] += 1
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    for needle in needles:
        assert needle in err, (needle, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    COUNTS[kind] = COUNTS.get(kind, 0) + 1
    return err


TINY = "data: {name: mnist, train_limit: 200, val_size: 100}\ntrain: {epochs: 1, batch_size: 100, progress: false}\n"


# ----------------------------------------------------------------------------- class 5: duplicate keys

@pytest.mark.parametrize("text, key, lines", [
    ("optim: {lr: 0.1}\ntrain: {epochs: 1}\noptim: {lr: 0.2}\n", "optim", (1, 3)),
    ("train:\n  epochs: 2\n  batch_size: 10\n  epochs: 3\n", "epochs", (2, 4)),
    ("data:\n  augment:\n    flip: true\n    flip: false\n", "flip", (3, 4)),
    ("model: {name: lenet5, name: mlp}\n", "name", (1, 1)),
    ("seed: 1\nseed: 1\n", "seed", (1, 2)),  # the same value twice is still a slip
    ("train: {epochs: 1}\ntrue: 1\nyes: 2\n", "True", (2, 3)),  # YAML 1.1 reads both as the same key
])
def test_a_key_given_twice_names_the_key_and_both_lines(tmp_path, capsys, text, key, lines):
    study = tmp_path / "s.yaml"
    study.write_text(text)
    err = refused("duplicate key", ["train", str(study), "--out", str(tmp_path / "run")], capsys,
                  str(study), repr(key) if key != "True" else "True", f"lines {lines[0]} and {lines[1]}")
    assert "given twice" in err
    assert not (tmp_path / "run").exists()


def test_an_axis_twice_in_a_sweep_file(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(TINY)
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: base.yaml\naxes:\n  optim.lr: [0.1, 0.01]\n  optim.lr: [0.5]\nseeds: 1\n")
    refused("duplicate key", ["sweep", str(sweep), "--out", str(tmp_path / "out")], capsys,
            "'optim.lr'", "lines 3 and 4", "in axes")
    assert not (tmp_path / "out").exists()


def test_a_duplicate_in_a_base_study_of_a_sweep(tmp_path, capsys):
    base = tmp_path / "base.yaml"
    base.write_text(TINY + "seed: 1\nseed: 2\n")
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: base.yaml\naxes: {optim.lr: [0.1, 0.01]}\n")
    refused("duplicate key", ["sweep", str(sweep), "--dry-run"], capsys, str(base), "'seed'")


def test_duplicates_inside_lists_and_overrides(tmp_path, capsys):
    sweep = tmp_path / "sw.yaml"
    sweep.write_text("base: {train: {epochs: 1}}\naxes:\n  zip:\n    - optim.lr: [0.1]\n      optim.lr: [0.2]\n")
    refused("duplicate key", ["sweep", str(sweep), "--dry-run"], capsys, "'optim.lr'", "in axes.zip.[0]")
    with pytest.raises(ConfigError, match="given twice"):
        parse_value("{a: 1, a: 2}")
    TRIED["n"] += 1
    COUNTS["duplicate key"] += 1


def test_merge_keys_may_be_overridden_and_plain_files_still_load():
    text = "defaults: &d {lr: 0.1, momentum: 0.9}\noptim:\n  <<: *d\n  lr: 0.2\n"
    assert load_yaml_text(text)["optim"] == {"lr": 0.2, "momentum": 0.9}
    assert load_yaml_text("a: {b: 1}\nc: [1, {b: 2}]\n") == yaml.safe_load("a: {b: 1}\nc: [1, {b: 2}]\n")


keys = st.text(string.ascii_lowercase + "_", max_size=8).map(lambda s: "k" + s)  # never a YAML word (no, on, null)
scalars = st.one_of(st.integers(-9, 9), st.booleans(), st.text(string.ascii_letters, max_size=5), st.none())
trees = st.recursive(st.dictionaries(keys, scalars, min_size=1, max_size=4),
                     lambda inner: st.dictionaries(keys, st.one_of(scalars, inner), min_size=1, max_size=4),
                     max_leaves=20)


def _mappings(tree, path=()):
    yield path, tree
    for k, v in tree.items():
        if isinstance(v, dict):
            yield from _mappings(v, (*path, k))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees, pick=st.randoms(use_true_random=False), block=st.booleans())
def test_property_any_duplicated_key_at_any_depth_is_refused(tree, pick, block):
    """Random nested mappings, dumped as YAML (block or flow style), with one key of one mapping
    written a second time: always refused, naming that key; the clean dump always loads back equal."""
    text = yaml.safe_dump(tree, default_flow_style=not block, sort_keys=False, width=10_000)
    assert load_yaml_text(text) == tree
    path, mapping = pick.choice(list(_mappings(tree)))
    key = pick.choice(list(mapping))
    text = _dump_with_duplicate(tree, path, key)
    TRIED["n"] += 1
    with pytest.raises(yaml.YAMLError) as e:
        load_yaml_text(text)
    assert f"key {key!r} is given twice" in str(e.value)
    assert (f"in {'.'.join(path)} " if path else "at the top level ") in str(e.value)
    COUNTS["duplicate key"] = COUNTS.get("duplicate key", 0) + 1


def _dump_with_duplicate(tree: dict, path: tuple, key: str, indent: int = 0, here: tuple = ()) -> str:
    """Block-style YAML of ``tree`` where the mapping at ``path`` lists ``key`` twice."""
    out = []
    items = list(tree.items())
    if here == path:
        items.append((key, tree[key]))
    for k, v in items:
        pad = "  " * indent
        if isinstance(v, dict):
            out.append(f"{pad}{k}:\n" + _dump_with_duplicate(v, path, key, indent + 1, (*here, k)))
        else:
            out.append(f"{pad}{k}: {yaml.safe_dump(v, default_flow_style=True).removesuffix(chr(10)).removesuffix('...').strip()}\n")
    return "".join(out)


# ----------------------------------------------------------------------------- class 6: plain names

BAD_NAMES = ["../../../x", "a/b", "/abs", "..", ".", "a\\b", "x..y", "", " lead", "trail ", "a\x00b", "a\nb",
             "tab\there", "n" * 101, "\u202ertl"]


@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_study_name_that_leaves_its_folder_is_refused(tmp_path, capsys, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text(TINY + "name: " + yaml.safe_dump(name, default_flow_style=True).strip().removesuffix("...").strip()
                     + "\n")
    assert yaml.safe_load(study.read_text())["name"] == name
    refused("bad name", ["train", str(study)], capsys, "name:", "plain name")
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "x").exists()


@pytest.mark.parametrize("name", ["../x", "a/b", "\x07bell"])
def test_a_bad_name_as_an_override_or_an_inline_sweep_base(tmp_path, capsys, name, monkeypatch):
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "s.yaml"
    study.write_text(TINY)
    refused("bad name", ["train", str(study), f"name={name}"], capsys, "name:")
    sweep = tmp_path / "sw.yaml"
    sweep.write_text(yaml.safe_dump({"base": {"name": name, "train": {"epochs": 1}}, "axes": {"optim.lr": [0.1]}}))
    refused("bad name", ["sweep", str(sweep), "--dry-run"], capsys, "name:")


def test_names_from_file_names_are_checked_too(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "a..b.yaml"  # the stem would be the default name and folder
    weird.write_text(TINY)
    refused("bad name", ["train", str(weird)], capsys, "taken from the file name")
    sweep = tmp_path / "x..y.yaml"
    sweep.write_text("base: {train: {epochs: 1}}\naxes: {optim.lr: [0.1]}\n")
    refused("bad name", ["sweep", str(sweep)], capsys, "sweep file name")
    assert not (tmp_path / "sweeps").exists()


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=0, max_size=120))
def test_property_a_plain_name_is_one_folder_inside_its_parent(name):
    """Any text: either refused, or it names exactly one child folder of runs/."""
    import os.path

    TRIED["n"] += 1
    problem = name_problem(name)
    if problem is None:
        joined = os.path.normpath(os.path.join("runs", name))
        assert os.path.dirname(joined) == "runs" and os.path.basename(joined) == name
        assert check_name(name, "name") == name
        TRIED["plain"] += 1
    else:
        with pytest.raises(ConfigError, match="name"):
            check_name(name, "name")
        COUNTS["bad name"] = COUNTS.get("bad name", 0) + 1


# ----------------------------------------------------------------------------- class 10: schedules

@pytest.mark.parametrize("overrides, field", [
    (["sched.name=multistep", "sched.milestones=[3,12]", "train.epochs=10"], "sched.milestones: 12"),
    (["sched.name=multistep", "sched.milestones=[10]", "train.epochs=10"], "sched.milestones: 10"),
    (["sched.name=step", "sched.step_size=10", "train.epochs=10"], "sched.step_size: 10"),
    (["sched.name=step", "sched.step_size=5000", "sched.interval=step", "train.epochs=1"], "sched.step_size"),
    (["sched.name=onecycle", "train.epochs=1"], "onecycle"),
    (["sched.name=onecycle", "train.epochs=2"], "onecycle"),
    (["sched.name=onecycle", "train.epochs=4"], "onecycle"),  # pct_start × 4 = 1: torch divides by zero
    (["sched.name=onecycle", "sched.pct_start=0.5", "train.epochs=2"], "onecycle"),
    (["sched.name=cosine", "sched.warmup_steps=5", "train.epochs=5"], "sched.warmup_steps: 5"),
    (["sched.name=cosine", "sched.warmup_steps=20", "sched.interval=step", "train.epochs=1"], "sched.warmup_steps"),
    (["sched.name=multistep", "sched.milestones=[4]", "sched.warmup_steps=6", "train.epochs=10"],
     "sched.milestones: 4"),
])
def test_impossible_schedules_are_refused_at_load(tmp_path, capsys, overrides, field):
    study = tmp_path / "s.yaml"
    study.write_text("data: {name: mnist, train_limit: 1000, val_size: 500}\ntrain: {batch_size: 100}\n")
    refused("impossible schedule", ["train", str(study), "--out", str(tmp_path / "run"), *overrides], capsys,
            field, "this run")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("overrides, needle", [
    (["sched.name=none", "sched.warmup_steps=3"], "is ignored"),
    (["sched.name=cosine", "train.epochs=1"], "never changes the rate"),
    (["sched.name=step", "sched.step_size=1", "sched.interval=step", "sched.gamma=0.1", "train.epochs=1"],
     "down to"),
    (["sched.name=multistep", "sched.milestones=[2]", "sched.gamma=1", "train.epochs=4"], "never changes"),
    (["sched.name=cosine", "sched.warmup_steps=7", "train.epochs=10"], "more than half"),
])
def test_suspicious_schedules_load_with_a_warning(overrides, needle):
    from cnnlab.config.rules import check_schedule

    TRIED["n"] += 1
    cfg = load_config(None, ["data.train_limit=1000", "data.val_size=500", "train.batch_size=100", *overrides])
    warnings = check_schedule(cfg)
    assert any(needle in w for w in warnings), warnings
    COUNTS["suspicious schedule warned"] = COUNTS.get("suspicious schedule warned", 0) + 1


def test_sound_schedules_and_every_recipe_pass_without_refusal():
    from cnnlab.config.rules import check_schedule

    for overrides in (["sched.name=onecycle", "sched.interval=step"], ["sched.name=onecycle", "train.epochs=5"],
                      ["sched.name=multistep", "sched.milestones=[3,6]", "train.epochs=10"],
                      ["sched.name=step", "sched.step_size=3", "train.epochs=10"]):
        assert check_schedule(load_config(None, overrides)) == []
    # every recipe still loads: tests/test_config.py::test_every_recipe_is_valid (check_config runs the rule)


def test_warnings_reach_the_summary(tmp_path, tiny_config):
    from cnnlab.training import loop as train

    cfg = tiny_config(**{"sched.name": "none", "sched.warmup_steps": 2, "train.epochs": 0.2})
    summary = train.run(cfg, tmp_path / "run", log=lambda m: None)
    assert any("sched.warmup_steps=2 is ignored" in w for w in summary["warnings"])


def test_random_impossible_milestones_are_always_refused():
    rng = random.Random(0)
    for _ in range(25):
        epochs = rng.randint(1, 30)
        late = rng.randint(epochs, epochs + 20)
        early = sorted({rng.randint(1, epochs - 1) for _ in range(2)}) if epochs > 1 else []
        TRIED["n"] += 1
        with pytest.raises(ConfigError, match=f"sched.milestones: {late}"):
            load_config(None, [f"train.epochs={epochs}", "sched.name=multistep",
                               f"sched.milestones={sorted(set(early + [late]))}"])
        COUNTS["impossible schedule"] = COUNTS.get("impossible schedule", 0) + 1
