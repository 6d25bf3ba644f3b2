import pytest

from cnnlab.registry import Registry, UnknownName


def test_register_and_get():
    r = Registry("widget")

    @r.register("a")
    def make_a():
        return 1

    assert r.get("a") is make_a
    assert "a" in r and r.names() == ["a"]


def test_duplicate_name_raises():
    r = Registry("widget")
    r.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="registered twice"):
        r.register("a")(lambda: 2)


def test_unknown_name_lists_choices():
    r = Registry("widget")
    r.register("alpha")(lambda: 1)
    r.register("beta")(lambda: 2)
    with pytest.raises(UnknownName) as e:
        r.get("gamma")
    assert "unknown widget 'gamma'" in str(e.value) and "alpha, beta" in str(e.value)


# ----------------------------------------------------------------------------- the model registry and ModelInfo

import dataclasses  # noqa: E402

import torch  # noqa: E402
from torch import nn  # noqa: E402

import cnnlab.models  # noqa: E402,F401 - fills MODELS
from cnnlab.registry import MODELS, ModelInfo, ModelRegistry, attach_info, find_info, info_of  # noqa: E402


def tiny_zoo() -> ModelRegistry:
    zoo = ModelRegistry("model")

    @zoo.register("tiny", info=ModelInfo(family="test", head_name="fc", min_input_size=2))
    def tiny(num_classes: int = 10, in_channels: int = 1, *, width: int = 4, softmax_output: bool = False):
        """A tiny net."""
        model = nn.Sequential()
        model.add_module("conv", nn.Conv2d(in_channels, width, 1))
        model.add_module("fc", nn.Linear(width, num_classes))
        if softmax_output:  # a fact that depends on an option: the builder attaches it
            attach_info(model, zoo.info("tiny").but(output_kind="probs"))
        return model

    return zoo


def test_a_registered_builder_attaches_its_info():
    zoo = tiny_zoo()
    model = zoo.get("tiny")(num_classes=3, in_channels=2)
    assert info_of(model) == ModelInfo(family="test", head_name="fc", min_input_size=2, name="tiny", in_channels=2)
    assert "model_info" not in str(model.state_dict().keys())  # a plain attribute, not a buffer or a submodule
    # defaults are resolved from the builder's own signature, positional arguments too
    assert info_of(zoo.get("tiny")()).in_channels == 1 and info_of(zoo.get("tiny")(5, 3)).in_channels == 3


def test_a_builder_may_refine_its_info_from_its_options():
    zoo = tiny_zoo()
    info = info_of(zoo.get("tiny")(softmax_output=True))
    assert info.output_kind == "probs" and info.name == "tiny" and info.min_input_size == 2
    assert zoo.info("tiny").output_kind == "logits"  # the registered facts are untouched


def test_the_wrapper_keeps_the_builders_name_signature_and_doc():
    fn = tiny_zoo().get("tiny")
    assert fn.__name__ == "tiny" and fn.__doc__ == "A tiny net."
    assert list(tiny_zoo().options("tiny")) == ["width", "softmax_output"]


def test_model_registration_needs_info_and_the_builder_arguments():
    zoo = ModelRegistry("model")
    with pytest.raises(TypeError, match="ModelInfo"):
        zoo.register("a")
    with pytest.raises(TypeError, match="in_channels"):
        zoo.register("b", info=ModelInfo(family="test"))(lambda num_classes=10: nn.Linear(1, num_classes))
    zoo.register("c", info=ModelInfo(family="test"))(lambda num_classes=10, in_channels=1: nn.Linear(1, 1))
    with pytest.raises(ValueError, match="registered twice"):
        zoo.register("c", info=ModelInfo(family="test"))(lambda num_classes=10, in_channels=1: nn.Linear(1, 1))
    with pytest.raises(UnknownName, match="known: c"):
        zoo.info("d")


def test_model_info_is_frozen_and_checked():
    info = ModelInfo(family="test", stages=["layer1"])
    assert info.stages == ("layer1",)  # a tuple, so the info stays hashable and immutable
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.head_name = "head"
    with pytest.raises(ValueError, match="output_kind"):
        ModelInfo(family="test", output_kind="logit")
    with pytest.raises(ValueError, match="min_input_size"):
        ModelInfo(family="test", min_input_size=0)
    with pytest.raises(ValueError, match="head_name"):
        ModelInfo(family="test", head_name="")
    assert info.but(head_name="head").head_name == "head" and info.head_name == "fc"


def test_info_of_looks_through_wrappers_and_refuses_foreign_networks():
    model = MODELS.get("linear")(num_classes=3, in_channels=1)
    ema = torch.optim.swa_utils.AveragedModel(model)
    assert info_of(ema) == info_of(ema.module) == info_of(model)
    compiled_like = nn.Module()
    compiled_like._orig_mod = model  # what torch.compile's wrapper holds
    assert info_of(compiled_like) is info_of(model)
    assert find_info(nn.Linear(2, 2)) is None
    with pytest.raises(TypeError, match="no ModelInfo"):
        info_of(nn.Linear(2, 2))


def test_every_registered_model_has_info_and_options_a_study_file_can_set():
    from cnnlab.config.schema import ModelConfig

    for name in MODELS.names():
        info = MODELS.info(name)
        assert isinstance(info, ModelInfo) and info.family
        assert set(MODELS.options(name)) <= set(ModelConfig.model_fields), name
