"""Bad input never starts work: every way a study or sweep file can be wrong ends the
command with exit code 2 and one message that names the field, before a run folder exists.

The field list is not written out by hand: it is read from ``cnnlab.config.schema.Config``
(recursively), so a field added later is covered automatically. For each field,
hypothesis generates values of the wrong type, out of its range, names that are not
registered, and keys that do not exist; they reach the real ``cnnlab train`` (called
in-process through ``cnnlab.cli.main``) either inside a study file or as a
``key=value`` override. Combinations that only fail together (an ``nll`` loss on a
net that outputs logits, ``finetune=layer3`` on LeNet-5, ...) and broken files
(malformed YAML, empty, a list, a directory) are listed explicitly.

How many invalid inputs were generated and rejected is printed at the end of the
module and stored in pytest's cache (``.pytest_cache/v/cnnlab/invalid_input``).
"""
from __future__ import annotations

import math
import os
import shutil
import tempfile
import typing
from pathlib import Path

import annotated_types
import pytest
import torch
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from cnnlab import cli
from conftest import print_summary_line
from cnnlab.config.schema import Config, parse_value
from cnnlab.registry import DATASETS, LOSSES, MODELS, OPTIMIZERS, SCHEDULERS

# A valid, tiny study: if a bad value were accepted, the run that follows would be short.
BASE: dict = {
    "name": "bad-input",
    "seed": 0,
    "data": {"name": "mnist", "train_limit": 1000, "val_size": 500, "download": False},
    "model": {"name": "lenet5"},
    "optim": {"name": "adam", "lr": 0.003},
    "train": {"epochs": 0.05, "batch_size": 100, "progress": False},
}

COUNTS: dict[str, int] = {"generated": 0, "rejected": 0}
BY_KIND: dict[str, int] = {}

# Examples per field and kind of mistake. Each one is a full `cnnlab train` call (config
# validation plus a network built on the meta device: a few milliseconds).
EXAMPLES = int(os.environ.get("CNNLAB_FUZZ_EXAMPLES", "10"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, print_blob=True,
                # An accepted bad value starts a (short) real run; shrinking would repeat it many times.
                phases=(Phase.explicit, Phase.reuse, Phase.generate),
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.filter_too_much])


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    yield
    record = {**COUNTS, "by_kind": dict(sorted(BY_KIND.items()))}
    line = (f"invalid inputs: {COUNTS['generated']} generated, {COUNTS['rejected']} rejected with exit code 2 "
            f"({', '.join(f'{k} {v}' for k, v in sorted(BY_KIND.items()))})")
    print_summary_line(request, line, "cnnlab/invalid_input", record)


# ----------------------------------------------------------------------------- the config's fields


def _is_section(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def walk(model: type[BaseModel] = Config, prefix: str = ""):
    """(dotted name, FieldInfo) of every leaf field, and the dotted names of the sections."""
    leaves, sections = [], []
    for name, info in model.model_fields.items():
        dotted = prefix + name
        if _is_section(info.annotation):
            sections.append((dotted, info.annotation))
            sub_leaves, sub_sections = walk(info.annotation, dotted + ".")
            leaves += sub_leaves
            sections += sub_sections
        else:
            leaves.append((dotted, info))
    return leaves, sections


LEAVES, SECTIONS = walk()
LEAF_NAMES = [name for name, _ in LEAVES]
SECTION_NAMES = [name for name, _ in SECTIONS]

REGISTRY_FIELDS = {"data.name": DATASETS, "model.name": MODELS, "optim.name": OPTIMIZERS,
                   "sched.name": SCHEDULERS, "loss.name": LOSSES}
FINETUNE_WORDS = {"all", "head", "none", "layer1", "layer2", "layer3", "layer4"}
POSITIVE_LISTS = {"model.widths", "model.hidden", "sched.milestones"}  # lists of sizes / epochs: each >= 1
SEEDS = {"seed", "data.split_seed"}  # must fit every torch generator the run seeds from them
JITTER_FIELDS = {f"data.augment.{k}" for k in ("brightness", "contrast", "saturation", "hue")}


def test_the_walk_covers_the_whole_config():
    # A sanity check of the walk itself, so "every field" means every field.
    assert {"seed", "data.augment.hue", "train.early_stopping.min_delta", "model.init_from",
            "train.finetune", "optim.betas"} <= set(LEAF_NAMES)
    assert {"data", "data.augment", "model", "optim", "sched", "loss", "train", "train.early_stopping"} \
        == set(SECTION_NAMES)
    assert len(LEAF_NAMES) == len(set(LEAF_NAMES)) > 60


# ----------------------------------------------------------------------------- strategies

_printable = st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs", "Cc", "Zl", "Zp"))
# Text that no lax parser reads as a number or a boolean (pydantic accepts "3", "1e3", "yes", "on"...).
words = st.text(_printable, max_size=12).map(lambda s: "x" + s)
any_text = st.text(_printable, max_size=16)
small_lists = st.lists(st.one_of(st.integers(-5, 5), words), min_size=0, max_size=3)
small_dicts = st.dictionaries(st.from_regex(r"[a-z]{1,6}", fullmatch=True), st.integers(0, 9), min_size=0,
                              max_size=2)
fractional = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e9, max_value=1e9).filter(
    lambda x: x != int(x))
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


def _strip_optional(annotation):
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _bounds(info):
    lo = hi = None
    lo_open = hi_open = False
    for m in info.metadata:
        if isinstance(m, annotated_types.Ge):
            lo = m.ge
        elif isinstance(m, annotated_types.Gt):
            lo, lo_open = m.gt, True
        elif isinstance(m, annotated_types.Le):
            hi = m.le
        elif isinstance(m, annotated_types.Lt):
            hi, hi_open = m.lt, True
    return lo, lo_open, hi, hi_open


def _out_of_range(info, integer: bool):
    """Values just outside and far outside the field's bounds (None when it has none)."""
    lo, lo_open, hi, hi_open = _bounds(info)
    parts = []
    if integer:
        if lo is not None:
            parts.append(st.integers(max_value=lo if lo_open else lo - 1, min_value=lo - 10**12))
        if hi is not None:
            parts.append(st.integers(min_value=hi if hi_open else hi + 1, max_value=hi + 10**12))
    else:
        if lo is not None:
            below = st.floats(max_value=lo, min_value=lo - 1e12, exclude_max=not lo_open, allow_nan=False)
            parts.append(below)
        if hi is not None:
            parts.append(st.floats(min_value=hi, max_value=hi + 1e12, exclude_min=not hi_open, allow_nan=False))
        parts.append(non_finite)  # NaN or an infinity is never a usable setting
    return st.one_of(parts) if parts else None


def invalid_values(name: str, info) -> dict[str, st.SearchStrategy]:
    """{kind of mistake: strategy} for one leaf field."""
    ann = _strip_optional(info.annotation)
    origin = typing.get_origin(ann)
    kinds: dict[str, st.SearchStrategy] = {}
    if name in REGISTRY_FIELDS:
        known = set(REGISTRY_FIELDS[name].names())
        kinds["unknown name"] = any_text.filter(lambda s: s not in known)
        kinds["wrong type"] = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), small_lists,
                                        small_dicts)
    elif name == "train.finetune":
        kinds["unknown name"] = any_text.filter(lambda s: s not in FINETUNE_WORDS)
        kinds["wrong type"] = st.one_of(st.integers(), st.floats(allow_nan=False), small_dicts,
                                        st.lists(st.integers(), min_size=1, max_size=3), st.just([]))
        kinds["unknown prefix"] = st.lists(words, min_size=1, max_size=3)  # no LeNet-5 parameter starts so
    elif name in ("data.val_size", "data.test_size"):  # a count of images or a fraction in (0, 1)
        least = 0 if name == "data.val_size" else 1
        kinds["wrong type"] = st.one_of(words, st.booleans(), small_lists, small_dicts)
        kinds["out of range"] = st.one_of(
            st.integers(max_value=least - 1, min_value=-(10**12)),
            st.floats(min_value=1, max_value=1e9, allow_nan=False).filter(lambda f: not f.is_integer()),
            st.floats(max_value=-1e-9, min_value=-1e9, allow_nan=False), non_finite)
    elif name == "data.resize":  # one side in pixels or [height, width]
        kinds["wrong type"] = st.one_of(words, fractional, small_dicts,
                                        st.lists(st.integers(8, 64), min_size=3, max_size=4))
        kinds["out of range"] = st.one_of(st.integers(max_value=7, min_value=-(10**6)),
                                          st.integers(min_value=4097, max_value=10**6),
                                          st.lists(st.integers(-10, 7), min_size=2, max_size=2))
    elif name in JITTER_FIELDS:  # a number or a range [lo, hi], as torchvision's ColorJitter takes them
        kinds["wrong type"] = st.one_of(words, small_dicts, st.just([]), st.lists(words, min_size=2, max_size=2),
                                        st.lists(st.floats(0, 0.4), min_size=3, max_size=4))
        reversed_range = st.tuples(st.floats(0.1, 0.5), st.floats(0, 0.09)).map(list)  # lo > hi
        too_big = [st.floats(min_value=0.5, exclude_min=True, max_value=1e6)] if name.endswith("hue") else []
        kinds["out of range"] = st.one_of(st.floats(max_value=-1e-9, min_value=-1e9), non_finite, reversed_range,
                                          st.lists(non_finite, min_size=2, max_size=2), *too_big)
    elif ann is bool:
        kinds["wrong type"] = st.one_of(words, st.integers().filter(lambda i: i not in (0, 1)),
                                        fractional, small_lists, small_dicts)
    elif ann is int:
        kinds["wrong type"] = st.one_of(words, fractional, non_finite, small_lists, small_dicts)
        if name in SEEDS:
            kinds["out of range"] = st.one_of(st.integers(min_value=2**64, max_value=2**80),
                                              st.integers(max_value=-1, min_value=-(2**80)))
        elif (oor := _out_of_range(info, integer=True)) is not None:
            kinds["out of range"] = oor
    elif ann is float:
        kinds["wrong type"] = st.one_of(words, small_lists, small_dicts)
        kinds["out of range"] = _out_of_range(info, integer=False)
    elif ann is str:
        kinds["wrong type"] = st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), small_lists,
                                        small_dicts)
        if name in ("model.weights_path", "model.init_from"):
            kinds["missing file"] = st.from_regex(r"[a-z]{1,10}(/[a-z]{1,6}){0,2}\.pt", fullmatch=True).map(
                lambda s: f"/nonexistent-cnnlab/{s}")
        if name in ("model.variant", "model.features_at"):
            kinds["unknown name"] = any_text
    elif typing.get_origin(ann) is typing.Literal:
        choices = set(typing.get_args(ann))
        if all(isinstance(c, str) for c in choices):
            kinds["unknown name"] = any_text.filter(lambda s: s not in choices)
            kinds["wrong type"] = st.one_of(st.integers(), small_lists, small_dicts)
        else:  # data.channels: Literal[1, 3]
            kinds["unknown name"] = st.integers(-1000, 1000).filter(lambda i: i not in choices)
            kinds["wrong type"] = st.one_of(words, fractional, small_lists, small_dicts)
    elif origin is list:
        kinds["wrong type"] = st.one_of(words, st.integers(), small_dicts,
                                        st.lists(st.one_of(words, fractional), min_size=1, max_size=3))
        if name in POSITIVE_LISTS:
            kinds["out of range"] = st.lists(st.integers(1, 64), min_size=0, max_size=2).flatmap(
                lambda ok: st.integers(-(10**6), 0).map(lambda bad: [*ok, bad]))
    elif origin is tuple:  # optim.betas
        kinds["wrong type"] = st.one_of(words, st.floats(0, 0.99), small_dicts,
                                        st.lists(st.floats(0, 0.99), min_size=0, max_size=1),
                                        st.lists(st.floats(0, 0.99), min_size=3, max_size=4),
                                        st.lists(words, min_size=2, max_size=2))
        kinds["out of range"] = st.tuples(st.floats(0, 0.99), st.one_of(
            st.floats(min_value=1, max_value=1e6), st.floats(max_value=-1e-9, min_value=-1e6), non_finite)).map(
            lambda t: list(t) if hash(t) % 2 else [t[1], t[0]])
    elif name == "data.max_memory":  # "auto", a size such as "2GB", or a number of bytes
        kinds["wrong type"] = st.one_of(st.booleans(), small_lists, small_dicts)
        kinds["unknown name"] = words  # "x...": no size, no unit
        kinds["out of range"] = st.one_of(st.integers(max_value=0, min_value=-(10**12)),
                                          st.floats(max_value=0.99, min_value=-1e9, allow_nan=False), non_finite)
    elif name == "train.tf32":  # "auto" or a bool
        kinds["unknown name"] = words
        kinds["wrong type"] = st.one_of(st.integers().filter(lambda i: i not in (0, 1)), fractional, small_lists,
                                        small_dicts)
    elif name == "loss.class_weights":  # "auto", a list of positive weights (one per class), or null
        kinds["unknown name"] = words
        kinds["wrong type"] = st.one_of(st.integers(), small_dicts, st.lists(words, min_size=1, max_size=3))
        kinds["out of range"] = st.lists(st.floats(0.1, 10), min_size=0, max_size=2).flatmap(
            lambda ok: st.floats(-1e6, 0).map(lambda bad: [*ok, bad]))
    elif name == "train.sweep":  # set by cnnlab sweep: {name, run_id, settings}
        kinds["wrong type"] = st.one_of(words, st.integers(), small_lists,
                                        st.dictionaries(st.just("nmae"), st.integers(0, 9), min_size=1))
    else:
        raise AssertionError(f"no invalid-value strategy for {name}: {info.annotation} - extend this test")
    return {k: v for k, v in kinds.items() if v is not None}


FIELD_KINDS = [(name, kind) for name, info in LEAVES for kind in invalid_values(name, info)]
STRATEGIES = {name: invalid_values(name, info) for name, info in LEAVES}


# ----------------------------------------------------------------------------- running the command


def set_dotted(doc: dict, dotted: str, value) -> dict:
    out = yaml.safe_load(yaml.safe_dump(doc))  # a deep copy
    node = out
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return out


def as_override(dotted: str, value) -> str | None:
    """``key=value`` as typed on a command line, when the text reads back as the same value."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    text = text.removesuffix("\n").removesuffix("\n...").strip()
    if "\n" in text:
        return None
    back = parse_value(text)
    same = back == value or (isinstance(value, float) and isinstance(back, float) and math.isnan(value)
                             and math.isnan(back))
    return f"{dotted}={text}" if same and type(back) is type(value) else None


def expect_rejected(capsys, doc, names: tuple[str, ...], kind: str, overrides=(), command="train",
                    study: Path | None = None, workdir: Path | None = None) -> str:
    """Run the command on ``doc`` (written as a file) and check the refusal; returns stderr."""
    COUNTS["generated"] += 1
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="cnnlab-bad-")) if own else workdir
    try:
        if study is None:
            study = workdir / "study.yaml"
            study.write_text(yaml.safe_dump(doc, allow_unicode=True) if not isinstance(doc, str) else doc)
        out = workdir / "out"
        before = sorted(p.name for p in workdir.iterdir())
        capsys.readouterr()
        code = cli.main([command, str(study), *overrides, "--out", str(out)])
        captured = capsys.readouterr()
        err = captured.err
        assert code == 2, f"exit code {code} for {kind} {names}: stderr {err!r} stdout {captured.out[-2000:]!r}"
        assert "cnnlab: error: " in err and "Traceback" not in err, err
        assert any(n in err for n in names), f"the message does not name {' or '.join(names)}: {err!r}"
        assert not out.exists(), f"{out} was created for an invalid input"
        assert sorted(p.name for p in workdir.iterdir()) == before, "files appeared next to the study file"
        COUNTS["rejected"] += 1
        BY_KIND[kind] = BY_KIND.get(kind, 0) + 1
        return err
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- every field


@pytest.mark.parametrize("name, kind", FIELD_KINDS, ids=[f"{n}:{k.replace(' ', '_')}" for n, k in FIELD_KINDS])
@FUZZ
@given(data=st.data())
def test_every_field_rejects_invalid_values(capsys, data_root, name, kind, data):
    value = data.draw(STRATEGIES[name][kind], label=name)
    via_override = data.draw(st.booleans(), label="as a key=value override")
    override = as_override(name, value) if via_override else None
    if override is not None:
        expect_rejected(capsys, BASE, (name,), kind, overrides=[override])
    else:
        expect_rejected(capsys, set_dotted(BASE, name, value), (name,), kind)


identifiers = st.from_regex(r"[a-z_][a-z0-9_]{0,14}", fullmatch=True)


@pytest.mark.parametrize("section", ["(top level)", *SECTION_NAMES])
@FUZZ
@given(data=st.data())
def test_unknown_keys_are_named(capsys, section, data):
    model = Config if section == "(top level)" else dict(SECTIONS)[section]
    key = data.draw(identifiers.filter(lambda k: k not in model.model_fields), label="key")
    value = data.draw(st.one_of(st.integers(), words, st.booleans()), label="value")
    dotted = key if section == "(top level)" else f"{section}.{key}"
    override = as_override(dotted, value) if data.draw(st.booleans(), label="as override") else None
    if override is not None:
        expect_rejected(capsys, BASE, (dotted,), "unknown key", overrides=[override])
    else:
        expect_rejected(capsys, set_dotted(BASE, dotted, value), (dotted,), "unknown key")


@pytest.mark.parametrize("section", SECTION_NAMES)
@FUZZ
@given(data=st.data())
def test_a_section_that_is_not_a_mapping(capsys, section, data):
    value = data.draw(st.one_of(st.none(), st.integers(), words, st.lists(st.integers(), max_size=2)))
    expect_rejected(capsys, set_dotted(BASE, section, value), (section,), "section not a mapping")


@pytest.mark.parametrize("override, names", [
    ("optim.lr.x=1", ("optim.lr",)),  # a key inside a value
    ("data.name.x=mnist", ("data.name",)),
    ("=3", ("=3", "empty key")),
    ("optim.lr", ("optim.lr", "key=value")),  # no '='
    ("train..epochs=1", ("train..epochs", "train.")),
])
def test_malformed_overrides(capsys, override, names):
    expect_rejected(capsys, BASE, names, "malformed override", overrides=[override])


# ----------------------------------------------------------------------------- combinations


COMBINATIONS = [
    # (overrides on top of BASE, the field the message must name)
    ({"loss.name": "nll"}, "loss.name"),  # LeNet-5 outputs logits; nll needs log-probabilities
    ({"model.softmax_output": True, "loss.name": "nll"}, "loss.name"),  # probabilities are not log-probs either
    ({"model.name": "mnist_cnn", "loss.name": "cross_entropy"}, "loss.name"),  # log-probs into cross_entropy
    ({"train.finetune": "layer3"}, "train.finetune"),  # LeNet-5 has no stages
    ({"model.name": "mlp", "train.finetune": "layer1"}, "train.finetune"),
    ({"data.resize": 8}, "data.resize"),  # LeNet-5 needs 28 px
    ({"data.resize": 27}, "data.resize"),
    ({"data.val_size": 60000}, "data.val_size"),  # all of MNIST's training images
    ({"data.val_size": 10**9}, "data.val_size"),
    ({"data.name": "cifar10", "data.val_size": 50000, "model.name": "lenet5_cifar"}, "data.val_size"),
    ({"data.name": "cifar10", "data.channels": 1, "model.name": "lenet5_cifar"}, "data.channels"),
    ({"sched.name": "multistep"}, "sched.milestones"),  # multistep without milestones
    ({"train.finetune": "none"}, "train.finetune"),  # trains nothing, yet epochs > 0
    ({"model.variant": "dropout"}, "model.variant"),  # not an option of lenet5
    ({"model.name": "mlp", "model.stem": "cifar"}, "model.stem"),
    ({"model.name": "mlp", "model.widths": [6, 16]}, "model.widths"),
    ({"model.widths": []}, "model.widths"),  # LeNet needs at least one conv
    ({"model.name": "mnist_cnn", "loss.name": "nll", "model.variant": "nope"}, "model.variant"),
    ({"model.features_at": "layer4"}, "model.features_at"),  # LeNet-5 has no such layer
    ({"model.features_at": "fc"}, "model.features_at"),  # the classifier itself is not a feature layer
    ({"train.finetune": ["features.0", "nope"]}, "train.finetune"),
    ({"model.weights_path": "/nonexistent/weights.pth"}, "model.weights_path"),
    ({"model.init_from": "/nonexistent/run"}, "model.init_from"),
    ({"seed": 2**64}, "seed"),  # torch generators take seeds below 2**64
    ({"seed": 10**14}, "seed"),  # the per-epoch permutation seed (seed × 1,000,003) would overflow
    ({"data.split_seed": 2**64}, "data.split_seed"),
    ({"train.lookahead": 0.77, "train.ema": 0.99}, "train.lookahead"),  # two averages of the weights: one story
    ({"data.augment.flip_mode": "alternate"}, "data.augment.flip_mode"),  # without data.augment.flip
    ({"train.whitening_bias_epochs": 3}, "train.whitening_bias_epochs"),  # LeNet-5 has no whitening layer
]


@pytest.mark.parametrize("overrides, field", COMBINATIONS, ids=[f for _, f in COMBINATIONS])
def test_combinations_that_cannot_work(capsys, data_root, overrides, field):
    doc = BASE
    for k, v in overrides.items():
        doc = set_dotted(doc, k, v)
    expect_rejected(capsys, doc, (field,), "combination")


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA on a machine without it")
def test_cuda_without_a_gpu(capsys, data_root):
    expect_rejected(capsys, set_dotted(BASE, "train.device", "cuda"), ("train.device",), "combination")


def test_reflect_padding_larger_than_the_image(capsys, data_root):
    doc = set_dotted(set_dotted(BASE, "data.augment.crop_padding", 40), "data.augment.crop_mode", "reflect")
    expect_rejected(capsys, doc, ("data.augment.crop_padding",), "combination")


def test_missing_data_root_names_the_folder_and_how_to_fix_it(capsys, tmp_path):
    root = tmp_path / "no-data-here"
    err = expect_rejected(capsys, set_dotted(BASE, "data.root", str(root)), ("data.root",), "missing data")
    assert str(root / "MNIST" / "raw") in err and "download" in err
    assert not root.exists(), "a failed look-up must not create the data root"


# ----------------------------------------------------------------------------- broken study files


BROKEN_FILES = {
    "unclosed flow mapping": "data: {name: mnist\nmodel: {name: lenet5}\n",
    "tab indentation": "data:\n\tname: mnist\n",
    "bad indentation": "data:\n  name: mnist\n bad: 1\n",
    "duplicate colon": "data: name: mnist\n",
    "empty file": "",
    "only comments": "# nothing here\n# at all\n",
    "only whitespace": "   \n\n  \n",
    "a list at the top": "- data\n- model\n",
    "a scalar at the top": "42\n",
    "a string at the top": "just some words\n",
    "null at the top": "null\n",
    "python object tag": "!!python/object/apply:os.system ['touch MARKER']\n",
    "python tag inside": "data: !!python/object/apply:os.system ['touch MARKER']\n",
    "unknown tag": "data: !mytag {name: mnist}\n",
    "undefined alias": "data: *nothing\n",
}


@pytest.mark.parametrize("content", list(BROKEN_FILES.values()), ids=list(BROKEN_FILES))
@pytest.mark.parametrize("command", ["train", "sweep"])
def test_broken_files(capsys, tmp_path, content, command):
    marker = tmp_path / "MARKER"
    study = tmp_path / "broken.yaml"
    study.write_text(content.replace("MARKER", str(marker)))
    err = expect_rejected(capsys, None, (str(study),), "broken file", command=command, study=study,
                          workdir=tmp_path)
    assert not marker.exists(), "a YAML tag ran code"
    assert len(err.strip().splitlines()) <= 3, f"expected one short message, got {err!r}"


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_binary_garbage_file(capsys, tmp_path, command):
    study = tmp_path / "garbage.yaml"
    study.write_bytes(bytes(range(256)) * 4 + b"\xff\xfe\x00")
    expect_rejected(capsys, None, (str(study),), "broken file", command=command, study=study, workdir=tmp_path)


@pytest.mark.parametrize("command", ["train", "sweep"])
def test_a_directory_or_a_missing_file(capsys, tmp_path, command):
    folder = tmp_path / "adir.yaml"
    folder.mkdir()
    expect_rejected(capsys, None, (str(folder),), "directory", command=command, study=folder, workdir=tmp_path)
    missing = tmp_path / "missing.yaml"
    expect_rejected(capsys, None, (str(missing),), "missing file", command=command, study=missing,
                    workdir=tmp_path)


@FUZZ
@given(text=st.text(max_size=200))
def test_random_text_that_is_not_a_study(capsys, text):
    """Any text that is not YAML, not a mapping, or a mapping with unknown keys is refused, naming
    the file or the key."""
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError:
        parsed = None
    names: tuple[str, ...] = ()
    if isinstance(parsed, dict):
        unknown = [str(k) for k in parsed if k not in Config.model_fields]
        if not unknown:
            return  # known sections with whatever values: the field tests' business
        names = tuple(unknown)
    workdir = Path(tempfile.mkdtemp(prefix="cnnlab-bad-"))
    try:
        study = workdir / "random.yaml"
        study.write_text(text)
        expect_rejected(capsys, None, (str(study), *names), "random text", study=study, workdir=workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


# ----------------------------------------------------------------------------- sweep files


SWEEP_BASE = {"base": BASE, "axes": {"optim.lr": [0.001, 0.003]}, "seeds": 2}


@pytest.fixture
def sweep_module():
    return pytest.importorskip("cnnlab.sweeps.run")


@pytest.mark.parametrize("name, kind", FIELD_KINDS, ids=[f"{n}:{k.replace(' ', '_')}" for n, k in FIELD_KINDS])
@settings(FUZZ, max_examples=max(2, EXAMPLES // 4))
@given(data=st.data())
def test_sweep_axis_with_an_invalid_value(capsys, sweep_module, data_root, name, kind, data):
    """A bad value anywhere on an axis stops the whole sweep before its first run."""
    bad = data.draw(STRATEGIES[name][kind], label=name)
    spec = {"base": BASE, "axes": {name: [_valid_value(name), bad]}, "seeds": 1}
    expect_rejected(capsys, spec, (name,), "sweep axis", command="sweep")


def _valid_value(name):
    """The value ``name`` has in BASE (or its default): a valid first entry for an axis."""
    node = Config.model_validate(BASE).to_dict()
    for part in name.split("."):
        node = node[part]
    return node


SWEEP_MISTAKES = [
    ({"bases": BASE}, "bases"),  # unknown top-level key
    ({"axes": {"optim.lr": [0.1]}}, "base"),  # no base
    ({"base": "no_such_study.yaml"}, "no_such_study.yaml"),
    ({"base": 5}, "base"),
    ({"base": []}, "base"),
    ({**SWEEP_BASE, "axes": [1, 2]}, "axes"),
    ({**SWEEP_BASE, "axes": {"optim.lr": 0.1}}, "optim.lr"),  # not a list
    ({**SWEEP_BASE, "axes": {"optim.lr": []}}, "optim.lr"),
    ({**SWEEP_BASE, "axes": {"optim.nope": [1, 2]}}, "optim.nope"),
    ({**SWEEP_BASE, "axes": {"seed": [1, 2]}}, "seed"),
    ({**SWEEP_BASE, "axes": {"optim.lr": [0.1], "zip": [{"optim.lr": [0.1], "optim.momentum": [0.9]}]}},
     "optim.lr"),  # varied twice
    ({**SWEEP_BASE, "zip": [{"optim.lr": [0.1, 0.2], "optim.momentum": [0.9]}]}, "zip"),
    ({**SWEEP_BASE, "ofat": "yes please"}, "ofat"),
    ({**SWEEP_BASE, "seeds": 0}, "seeds"),
    ({**SWEEP_BASE, "seeds": -3}, "seeds"),
    ({**SWEEP_BASE, "seeds": "three"}, "seeds"),
    ({**SWEEP_BASE, "seeds": [1, 1]}, "seeds"),
    ({**SWEEP_BASE, "seeds": []}, "seeds"),
    ({**SWEEP_BASE, "seeds": [0.5]}, "seeds"),
    ({**SWEEP_BASE, "seeds": True}, "seeds"),
    ({**SWEEP_BASE, "random": {"samples": 0, "space": {"optim.lr": {"loguniform": [1e-4, 1e-2]}}}}, "random"),
    ({**SWEEP_BASE, "random": {"samples": 2, "space": {"optim.wd": {"loguniform": [1e-4, 1e-2]}}}}, "optim.wd"),
    ({**SWEEP_BASE, "random": {"samples": 2, "space": {"optim.momentum": {"uniform": [0.5, 0.1]}}}},
     "optim.momentum"),
    ({**SWEEP_BASE, "random": {"samples": 2, "space": {"optim.momentum": {"normal": [0, 1]}}}},
     "optim.momentum"),
    ({**SWEEP_BASE, "random": {"samples": 3, "seed": 0, "space": {"optim.momentum": {"uniform": [0.5, 2.0]}}}},
     "optim.momentum"),  # draws out of the field's range
    ({**SWEEP_BASE, "axes": {"loss.name": ["cross_entropy", "nll"]}}, "loss.name"),  # a combination
]


@pytest.mark.parametrize("spec, field", SWEEP_MISTAKES)
def test_sweep_file_mistakes(capsys, sweep_module, data_root, spec, field):
    expect_rejected(capsys, spec, (field,), "sweep file", command="sweep")


@pytest.mark.parametrize("seeds", [[2**64], [10**14], [-1]], ids=["2**64", "10**14", "-1"])
def test_sweep_seeds_out_of_range(capsys, sweep_module, data_root, seeds):
    """Seeds from a sweep file must meet the same bounds as a study's ``seed``."""
    expect_rejected(capsys, {**SWEEP_BASE, "seeds": seeds}, ("seeds", "seed"), "sweep file", command="sweep")
