"""cnnlab.checks: combinations of valid fields that cannot work together, refused at load."""
import pytest

from cnnlab.config import ConfigError, load_config


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


def test_one_double_softmax_rule_for_the_warning_and_the_doctor():
    import torch

    from cnnlab.checks import config_warnings, double_softmax
    from cnnlab.doctor import diagnose

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

    from cnnlab.checks import config_warnings

    cfg = load_config(None, {"train.precision": "fp16"})
    assert any("fp16 on a CPU" in w for w in config_warnings(cfg, "logits", torch.device("cpu")))
