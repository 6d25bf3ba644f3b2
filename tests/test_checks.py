"""cnnlab.checks: combinations of valid fields that cannot work together, refused at load."""
import pytest

from cnnlab.config import ConfigError
from cnnlab.loader import load_config


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
