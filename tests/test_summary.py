"""Layer tables, parameter totals and FLOPs, checked against counts done by hand or by an
independent count over the model's own layers."""
import pytest
import torch
from torch import nn

import cnnlab.models  # noqa: F401
from cnnlab.models import transfer
from cnnlab.registry import MODELS
from cnnlab.models.layers import format_table, summarize


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # one image at a time; idle OpenMP threads would only spin
    yield
    torch.set_num_threads(before)


def test_lenet5_table_matches_the_classic_net():
    s = summarize(MODELS.get("lenet5")(), (1, 28, 28))
    assert s["params_total"] == s["params_trainable"] == 61_706
    rows = {r["name"]: r for r in s["layers"]}
    assert rows["features.0"] == {"name": "features.0", "type": "Conv2d", "output_shape": [6, 28, 28], "params": 156}
    assert rows["features.5"]["output_shape"] == [16, 5, 5] and rows["features.6"]["params"] == 48_120
    assert rows["fc"]["output_shape"] == [10] and rows["fc"]["params"] == 850
    assert sum(r["params"] for r in s["layers"]) == 61_706
    # multiply-adds by hand: C1 28·28·6·25, C3 10·10·16·150, C5 120·400, F6 120·84, output 84·10
    macs = 28 * 28 * 6 * 25 + 10 * 10 * 16 * 150 + 120 * 400 + 120 * 84 + 84 * 10
    assert s["flops_per_image"] == 2 * macs == 833_040


def test_lazy_layers_are_sized_before_counting():
    s = summarize(MODELS.get("mlp")(hidden=[64, 64, 64, 32, 16, 16, 10], dropout=0.1), (1, 28, 28))
    assert s["params_total"] == 61_720  # Study C's parameter-matched MLP
    s = summarize(MODELS.get("mlp")(in_channels=3), (3, 32, 32))
    assert s["params_total"] == 3072 * 512 + 512 + 5130


def independent_flops(model, input_shape):
    """2 × multiply-adds of every conv and linear layer, from their shapes seen by forward hooks."""
    total = []

    def hook(module, inputs, out):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total.append(2 * out.numel() * k)
        elif isinstance(module, nn.Linear):
            total.append(2 * out.numel() * module.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for h in handles:
        h.remove()
    return sum(total)


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("mnist_cnn", (1, 28, 28)),
                                        ("alexnet_small", (3, 32, 32))])
def test_flops_agree_with_an_independent_count(name, shape):
    model = MODELS.get(name)(num_classes=10, in_channels=shape[0])
    s = summarize(model, shape)
    assert s["flops_per_image"] == independent_flops(model, shape)
    assert s["params_total"] == sum(p.numel() for p in model.parameters())


def test_frozen_parts_stay_frozen_and_modes_are_restored():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "layer3")
    transfer.set_train_mode(model, True)
    modes = {name: m.training for name, m in model.named_modules()}
    stats = model.layer1[0].bn1.running_mean.clone(), model.layer3[0].bn1.running_mean.clone()
    s = summarize(model, (3, 32, 32))
    assert {name: m.training for name, m in model.named_modules()} == modes
    assert not model.layer1[0].bn1.training and model.layer3[0].bn1.training
    assert torch.equal(model.layer1[0].bn1.running_mean, stats[0])
    assert torch.equal(model.layer3[0].bn1.running_mean, stats[1])  # the summary pass ran in eval mode
    trainable = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("layer3.", "fc.")))
    assert s["params_trainable"] == trainable < s["params_total"] == 269_722


def test_format_table_shows_layers_totals_and_flops():
    model = MODELS.get("lenet5")(activation="relu", in_channels=3)
    transfer.apply_finetune(model, "head")
    text = format_table(summarize(model, (3, 32, 32)))
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "shape", "params"]
    assert any(line.split()[:3] == ["features.0", "Conv2d", "6×32×32"] for line in lines)
    assert "92,246 total, 850 trainable, 91,396 frozen" in text
    assert "FLOPs per image" in text
