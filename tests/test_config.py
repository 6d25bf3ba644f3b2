import pytest

from cnnlab.config.schema import ConfigError, apply_overrides, dump_yaml, parse_value
from cnnlab.config.load import load_config


def test_defaults_are_valid():
    cfg = load_config(None)
    assert cfg.data.name == "mnist" and cfg.model.name == "lenet5" and cfg.optim.lr > 0


def test_study_file_then_overrides(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("data: {name: fashion_mnist}\noptim: {name: sgd, lr: 0.1}\n")
    cfg = load_config(p, ["optim.lr=0.01", "model.activation=relu", "train.epochs=2"])
    assert cfg.name == "s" and cfg.data.name == "fashion_mnist"
    assert cfg.optim.name == "sgd" and cfg.optim.lr == 0.01 and cfg.model.activation == "relu"
    assert cfg.model.builder_options() == {"activation": "relu"}


def test_parse_value_types():
    assert parse_value("0.01") == 0.01 and parse_value("true") is True and parse_value("[6, 16]") == [6, 16]
    assert parse_value("relu") == "relu"


def test_apply_overrides_does_not_mutate():
    raw = {"optim": {"lr": 1}}
    out = apply_overrides(raw, {"optim.lr": 2, "train.epochs": 3})
    assert raw == {"optim": {"lr": 1}} and out == {"optim": {"lr": 2}, "train": {"epochs": 3}}


def test_dump_round_trips(tmp_path):
    cfg = load_config(None, ["model.widths=[8,16,32]", "seed=3"])
    p = tmp_path / "config.yaml"
    p.write_text(dump_yaml(cfg))
    assert load_config(p).model_dump() == cfg.model_dump()


@pytest.mark.parametrize("override, field", [
    ("optim.lr=-1", "optim.lr"),
    ("train.batch_size=0", "train.batch_size"),
    ("train.epochs=abc", "train.epochs"),
    ("model.name=resnet9000", "model.name"),
    ("optim.name=lion", "optim.name"),
    ("sched.name=warp", "sched.name"),
    ("loss.name=hinge2", "loss.name"),
    ("data.name=imagenet", "data.name"),
    ("train.precision=fp8", "train.precision"),
    ("optim.learning_rate=0.1", "optim.learning_rate"),
    ("colour=red", "colour"),
    ("data.val_size=60000", "data.val_size"),
    ("loss.name=nll", "loss.name"),  # lenet5 outputs logits
    ("train.finetune=layer3", "train.finetune"),  # lenet5 has no stages
    ("model.stem=cifar", "model.stem"),  # lenet5 has no stem option
    ("sched.name=multistep", "sched.milestones"),
    ("train.accumulate=0", "train.accumulate"),
    ("train.accumulate=1.5", "train.accumulate"),
    ("optim.clip_grad_norm=0", "optim.clip_grad_norm"),
    ("optim.clip_grad_norm=-1", "optim.clip_grad_norm"),
])
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert field in str(e.value)


def test_unknown_key_lists_allowed_keys():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["optim.learning_rate=0.1"])
    assert "unknown key" in str(e.value) and "lr" in str(e.value)


def test_unknown_model_lists_choices():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["model.name=nope"])
    assert "lenet5" in str(e.value) and "mlp" in str(e.value)


@pytest.mark.parametrize("text, needle", [
    ("", "empty"),
    ("data: [unclosed", "not valid YAML"),
    ("- a\n- b\n", "mapping"),
    ("42", "mapping"),
])
def test_bad_files(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_config(p)


def test_directory_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")


def test_every_recipe_is_valid():
    from pathlib import Path

    recipes = sorted(p for p in (Path(__file__).parents[1] / "recipes").rglob("*.yaml") if "sweeps" not in p.parts)
    assert recipes
    for p in recipes:
        load_config(p)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "adadelta", "rmsprop"])
def test_weight_decay_null_is_the_optimizers_own_as_in_torch_whatever_built_the_config(name):
    import torch

    from cnnlab.config.schema import validate

    params = [torch.nn.Parameter(torch.zeros(1))]
    torch_class = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
                   "adadelta": torch.optim.Adadelta, "rmsprop": torch.optim.RMSprop}[name]
    own = torch_class(params).defaults["weight_decay"]  # what torch does when the decay is not given
    from_file = load_config(None, [f"optim.name={name}"])
    assert from_file.optim.weight_decay == own
    # a config rebuilt from its own dump (what a sweep run and a resume load) keeps the number
    assert validate(from_file.to_dict()).optim.weight_decay == own
    assert load_config(None, [f"optim.name={name}", "optim.weight_decay=null"]).optim.weight_decay == own
    assert load_config(None, [f"optim.name={name}", "optim.weight_decay=0"]).optim.weight_decay == 0.0
    assert f"weight_decay: {own}" in dump_yaml(from_file)


def test_adamw_prints_the_decay_it_trains_with():
    from cnnlab.config.schema import config_diff_lines

    lines = config_diff_lines(load_config(None, ["optim.name=adamw"]))
    assert "  optim.weight_decay: 0.01" in lines
    assert not any("weight_decay" in line for line in config_diff_lines(load_config(None, ["optim.name=sgd"])))
