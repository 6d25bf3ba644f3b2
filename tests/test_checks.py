"""cnnlab.config.rules: combinations of valid fields that cannot work together, refused at load."""
import pytest

from cnnlab.config.schema import ConfigError
from cnnlab.config.load import load_config


def refused(**overrides) -> str:
    base = {"data.name": "mnist", "model.name": "lenet5"}
    with pytest.raises(ConfigError) as e:
        load_config(None, {**base, **overrides})
    return str(e.value)


def test_reflect_padding_must_be_smaller_than_the_image():
    msg = refused(**{"data.augment.crop_padding": 28, "data.augment.crop_mode": "reflect"})
    assert msg.startswith("data.augment.crop_padding: 28") and "28×28" in msg and "at most 27" in msg
    # the same padding is fine with zero padding, and reflection of 27 px still fits
    load_config(None, {"data.name": "mnist", "data.augment.crop_padding": 28})
    load_config(None, {"data.name": "mnist", "data.augment.crop_padding": 27, "data.augment.crop_mode": "reflect"})


def test_reflect_limit_follows_the_resized_size():
    load_config(None, {"data.name": "mnist", "data.resize": 64, "data.augment.crop_padding": 40,
                       "data.augment.crop_mode": "reflect"})
    assert "16×16" in refused(**{"data.resize": 16, "data.augment.crop_padding": 16,
                                 "data.augment.crop_mode": "reflect", "model.name": "mlp"})


def test_unknown_model_option_lists_the_allowed_ones():
    msg = refused(**{"model.name": "mnist_fast", "model.variant": "b"})  # a field of other models
    assert msg.startswith("model.variant: not an option of model 'mnist_fast'") and "batch_norm" in msg and "dropout" in msg


def test_too_small_input_for_the_network():
    msg = refused(**{"model.name": "airbench", "data.name": "mnist", "data.resize": 8})
    assert msg.startswith("data.resize:") and "9×9" in msg


def test_validation_hold_out_must_leave_training_images():
    assert refused(**{"data.val_size": 60000}).startswith("data.val_size: 60000 leaves no training images")


# ----------------------------------------------------------------------------- model options vs the builder


def test_a_model_option_the_builder_does_not_take_is_refused_in_one_paragraph():
    msg = refused(**{"model.name": "resnet20", "model.dropout": 0.3})
    assert msg.startswith("model.dropout: not an option of model 'resnet20' (it is set to 0.3")
    assert "accepts are: variant." in msg  # the builder's own options, from its signature
    assert "lenet5" in msg and "mlp" in msg  # where the option would apply
    assert "\n" not in msg


def test_an_option_no_model_takes_says_so():
    from cnnlab.config.rules import check_model_options
    from cnnlab.config.schema import ConfigError

    with pytest.raises(ConfigError, match="no registered model takes it"):
        check_model_options("lenet5", {"colour": "red"})
    check_model_options("lenet5", {"activation": "relu", "widths": [4, 8]})  # its own options pass


def test_other_families_fields_left_unset_or_null_are_fine(tmp_path):
    # the flat model section keeps every family's fields; only those set to a value are judged
    study = tmp_path / "s.yaml"
    study.write_text("model: {name: resnet20, variant: B, dropout: null, softmax_output: null}\n"
                     "data: {name: cifar10}\n")
    cfg = load_config(study)
    assert cfg.model.builder_options() == {"variant": "B"}


@pytest.mark.parametrize("name,option,value", [("mlp", "widths", [4]), ("airbench", "variant", "base"),
                                                ("resnet18", "softmax_output", True),
                                                ("mnist_cnn", "init", "kaiming")])
def test_every_family_refuses_foreign_options(name, option, value):
    msg = refused(**{"model.name": name, "data.name": "cifar10", f"model.{option}": value})
    assert msg.startswith(f"model.{option}: not an option of model {name!r}")


def test_checks_read_the_models_info():
    # mnist_cnn outputs log-probabilities (ModelInfo.output_kind), so cross-entropy is refused
    assert refused(**{"model.name": "mnist_cnn"}).startswith("loss.name: 'cross_entropy' expects")
    load_config(None, {"model.name": "mnist_cnn", "loss.name": "nll"})
    # lenet5 with softmax_output outputs probabilities: nll is refused (its output_kind is resolved per build)
    assert "outputs probs" in refused(**{"model.softmax_output": True, "loss.name": "nll"})
    # stages come from the info: resnet20 has layer1..3, not layer4
    assert "layer1" in refused(**{"model.name": "resnet20", "data.name": "cifar10", "train.finetune": "layer4"})


def test_one_double_softmax_rule_for_the_warning_and_the_doctor():
    import torch

    from cnnlab.config.rules import config_warnings, double_softmax
    from cnnlab.reporting.doctor import diagnose

    assert double_softmax("probs", "cross_entropy")
    assert not double_softmax("logits", "cross_entropy") and not double_softmax("probs", "mse")
    cfg = load_config(None, {"data.name": "mnist", "model.name": "lenet5", "model.softmax_output": True})
    cpu = torch.device("cpu")
    assert any("double softmax" in w for w in config_warnings(cfg, "probs", cpu))
    assert config_warnings(cfg, "logits", cpu) == []
    codes = {f["code"] for f in diagnose([], {"status": "completed"}, 10, "probs", "cross_entropy")}
    assert "double_softmax" in codes
    assert "double_softmax" not in {f["code"] for f in diagnose([], {"status": "completed"}, 10, "logits", "cross_entropy")}


def test_fp16_on_a_cpu_is_warned_about():
    import torch

    from cnnlab.config.rules import config_warnings

    cfg = load_config(None, {"train.precision": "fp16"})
    assert any("fp16 on a CPU" in w for w in config_warnings(cfg, "logits", torch.device("cpu")))


def test_an_image_folder_too_small_for_the_network_is_refused_naming_data_resize(tmp_path):
    # an image folder's size is known once loaded: refused there, before the first step, not in a convolution
    from cnnlab.training import loop as train
    from conftest import write_image_folder

    write_image_folder(tmp_path / "imgs" / "train", ["a", "b"], per_class=4, size=(8, 8))
    write_image_folder(tmp_path / "imgs" / "test", ["a", "b"], per_class=2, size=(8, 8))
    cfg = load_config(None, {"data.name": "imagefolder", "data.root": str(tmp_path / "imgs"), "data.val_size": 2,
                             "model.name": "lenet5", "train.epochs": 1, "train.progress": False})
    with pytest.raises(ConfigError, match=r"data.resize: .* are 8 pixels .* needs at least \d+×\d+"):
        train.run(cfg, tmp_path / "run", log=lambda *_: None)
    assert not (tmp_path / "run" / "summary.json").exists()
