"""The model zoo: every registered builder builds, runs forward and backward on MNIST- and
CIFAR-shaped input, carries facts (ModelInfo) that match what it is, and has the parameter count
its study says."""
import inspect
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import cnnlab.models  # noqa: F401 - fills the registry
from cnnlab.config.schema import ModelConfig
from cnnlab.models.resnet_cifar import PadShortcut
from cnnlab.models import info_of
from cnnlab.registry import MODELS

NUM_CLASSES = 7  # not 10, so a hard-coded class count shows


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny batches gain nothing from threads, and on a busy 2-core machine the idle OpenMP
    # threads spin: one thread makes these tests several times faster.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def built(name, in_channels, size, **options):
    """A model whose lazy layers have their size for ``size``-pixel images."""
    model = MODELS.get(name)(num_classes=NUM_CLASSES, in_channels=in_channels, **options)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, in_channels, size, size))
    return model.train()


def test_the_zoo_is_complete():
    expected = {"mlp", "linear", "lenet5", "lenet5_cifar", "mnist_cnn", "alexnet_small", "alexnet", "vgg16",
                "resnet18", "resnet50", "resnet101", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"}
    assert expected <= set(MODELS.names())


# ----------------------------------------------------------------------------- the whole registry


@pytest.mark.parametrize("channels,size", [(1, 28), (3, 32), (3, None)], ids=["1x28x28", "3x32x32", "min-size"])
@pytest.mark.parametrize("name", MODELS.names())
def test_forward_backward(name, channels, size):
    """Every model trains on MNIST and CIFAR shapes and at the smallest input its info admits; what forward
    returns is what ``info_of(model).output_kind`` says."""
    torch.manual_seed(0)
    model = MODELS.get(name)(num_classes=NUM_CLASSES, in_channels=channels)
    # torchvision's AlexNet needs 63 px; it runs at 64 here (the data would be resized for it)
    at_min = size is None
    size = max(size or 1, info_of(model).min_input_size)
    if at_min:
        # batch norm's batch statistics of 2 images at 1 px are degenerate (NaN gradients in ResNet-101):
        # min_input_size promises the layers accept the size, so use the running statistics here
        model.eval()
    x = torch.randn(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, NUM_CLASSES)
    kind = info_of(model).output_kind
    assert kind in ("logits", "log_probs", "probs")
    if kind == "probs":
        torch.testing.assert_close(out.sum(1), torch.ones(2))
    if kind == "log_probs":
        torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    log_probs = {"logits": F.log_softmax(out, 1), "log_probs": out, "probs": out.clamp_min(1e-12).log()}[kind]
    F.nll_loss(log_probs, torch.tensor([0, 1])).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert torch.isfinite(p.grad).all(), pname
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("name", MODELS.names())
def test_info_matches_the_network(name):
    """head_name names the last linear layer with num_classes outputs; stages and the input conv exist;
    the instance facts are filled in; options are config fields."""
    with torch.device("meta"):  # as cnnlab.config.rules builds it: no memory, no time
        model = MODELS.get(name)(num_classes=NUM_CLASSES, in_channels=3)
    info = info_of(model)
    head = model.get_submodule(info.head_name)
    assert isinstance(head, nn.Linear) and head.out_features == NUM_CLASSES
    assert [m for m in model.modules() if isinstance(m, nn.Linear)][-1] is head  # the last linear layer
    for stage in info.stages:
        assert isinstance(model.get_submodule(stage), nn.Module)
    if info.input_conv is not None:
        conv = model.get_submodule(info.input_conv)
        assert isinstance(conv, nn.Conv2d) and conv.in_channels == 3
    assert info.min_input_size >= 1 and info.name == name and info.in_channels == 3
    assert info.family == MODELS.info(name).family and info.family in cnnlab.models.__dict__
    assert info.needs_whitening_init == (name == "airbench")
    options = [p for p in inspect.signature(MODELS.get(name)).parameters if p not in ("num_classes", "in_channels")]
    assert set(options) <= set(ModelConfig.model_fields), f"{name} takes options a study file cannot set"


# ----------------------------------------------------------------------------- parameter counts

COUNTS = [
    # (name, options, channels, size, classes, params)
    ("lenet5", {}, 1, 28, 10, 61_706),  # Study C's classic LeNet-5
    ("lenet5", {"widths": [6, 16], "hidden": [120, 84]}, 1, 28, 10, 61_706),  # its two-conv form
    ("lenet5", {}, 3, 32, 10, 92_246),  # C5 sees 2×2 here: 480 → 84
    ("lenet5_cifar", {}, 3, 32, 10, 62_006),  # Study B's CIFAR base net
    ("lenet5_cifar", {"variant": "batchnorm"}, 3, 32, 10, 62_006 + 2 * (120 + 84)),
    ("mlp", {"hidden": [64, 64, 64, 32, 16, 16, 10], "dropout": 0.1}, 1, 28, 10, 61_720),  # Study C's MLP
    ("mlp", {"hidden": [512]}, 1, 28, 10, 784 * 512 + 512 + 5130),  # Study E's FC net
    ("linear", {}, 1, 28, 10, 7_850),
    ("linear", {}, 3, 32, 10, 30_730),
    ("mnist_cnn", {}, 1, 28, 10, 1_199_882),  # PyTorch's MNIST example net
    ("mnist_cnn", {"variant": "dropout"}, 1, 28, 10, 1_199_882),
    ("mnist_cnn", {"variant": "stride2"}, 1, 28, 10, 1_199_882),  # 26 → 12 either way
    ("mnist_cnn", {"variant": "batchnorm"}, 1, 28, 10, 1_199_882 + 2 * 9216 + 2 * 128),
    ("mnist_cnn", {"variant": "kernel5"}, 1, 28, 10, 832 + 51_264 + 6400 * 128 + 128 + 1290),
    ("alexnet_small", {}, 1, 28, 10, 4_557_514),
    ("alexnet_small", {}, 3, 32, 10, 5_871_434),
    # He et al. 2016 (option A): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M
    ("resnet20", {}, 3, 32, 10, 269_722),
    ("resnet32", {}, 3, 32, 10, 464_154),
    ("resnet44", {}, 3, 32, 10, 658_586),
    ("resnet56", {}, 3, 32, 10, 853_018),
    ("resnet110", {}, 3, 32, 10, 1_727_962),
    ("resnet20", {"variant": "B"}, 3, 32, 10, 269_722 + (16 * 32 + 64) + (32 * 64 + 128)),  # 1×1 projections
]


@pytest.mark.parametrize("name,options,channels,size,classes,expected", COUNTS,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}x{c[3]}" for c in COUNTS])
def test_parameter_count(name, options, channels, size, classes, expected):
    model = MODELS.get(name)(num_classes=classes, in_channels=channels, **options)
    with torch.no_grad():
        model.eval()(torch.zeros(1, channels, size, size))  # sizes the lazy layers
    assert n_params(model) == expected


@pytest.mark.parametrize("name,expected", [
    ("alexnet", 61_100_840), ("vgg16", 138_357_544), ("resnet18", 11_689_512),
    ("resnet50", 25_557_032), ("resnet101", 44_549_160)])
def test_torchvision_counts_match_torchvision(name, expected):
    import torchvision

    with torch.device("meta"):
        ours = MODELS.get(name)(num_classes=1000, in_channels=3)
        theirs = torchvision.models.get_model(name, weights=None)
    assert n_params(ours) == n_params(theirs) == expected
    assert [k for k in ours.state_dict()] == [k for k in theirs.state_dict()]  # so ImageNet weights load


# ----------------------------------------------------------------------------- LeNet-5


def test_lenet5_options_change_the_network():
    base = built("lenet5", 1, 28)
    assert [type(m) for m in base.features if isinstance(m, (nn.AvgPool2d, nn.MaxPool2d))] == [nn.AvgPool2d] * 2
    assert sum(isinstance(m, nn.Tanh) for m in base.modules()) == 4
    assert base.features[0].padding == (2, 2) and info_of(base).output_kind == "logits"
    tuned = built("lenet5", 1, 28, activation="leaky_relu", pooling="max", batch_norm=True, dropout=0.3,
                  widths=[32, 64, 256])
    assert sum(isinstance(m, nn.LeakyReLU) for m in tuned.modules()) == 4
    assert sum(isinstance(m, nn.MaxPool2d) for m in tuned.modules()) == 2
    assert [m.num_features for m in tuned.modules() if isinstance(m, nn.BatchNorm2d)] == [32, 64, 256]
    drops = [i for i, m in enumerate(tuned.hidden) if isinstance(m, nn.Dropout)]
    assert len(drops) == 1 and tuned.hidden[drops[0]].p == 0.3
    assert [m.out_channels for m in tuned.modules() if isinstance(m, nn.Conv2d)] == [32, 64, 256]


def test_lenet5_softmax_output_gives_probabilities():
    model = built("lenet5", 1, 28, softmax_output=True).eval()
    out = model(torch.randn(4, 1, 28, 28))
    assert info_of(model).output_kind == "probs"
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones(4))


def test_lenet5_cifar_variants():
    drop = built("lenet5_cifar", 3, 32, variant="dropout")
    assert [m.p for m in drop.modules() if isinstance(m, nn.Dropout)] == [0.4, 0.4]
    bn = built("lenet5_cifar", 3, 32, variant="batchnorm")
    assert [m.num_features for m in bn.modules() if isinstance(m, nn.BatchNorm1d)] == [120, 84]
    base = built("lenet5_cifar", 3, 32)
    assert base.features[0].padding == (0, 0) and isinstance(base.features[1], nn.ReLU)
    with pytest.raises(ValueError, match="variant"):
        MODELS.get("lenet5_cifar")(variant="huge")


def test_bad_options_are_value_errors():
    for name, options in [("lenet5", {"pooling": "median"}), ("lenet5", {"activation": "swish"}),
                          ("lenet5", {"widths": []}), ("mlp", {"init": "orthogonal"}),
                          ("mnist_cnn", {"variant": "wide"}), ("resnet20", {"variant": "C"}),
                          ("resnet18", {"stem": "tiny"}), ("alexnet_small", {"widths": [64, 128]})]:
        with pytest.raises(ValueError):
            MODELS.get(name)(**options)


@pytest.mark.parametrize("name,size", [("lenet5", 28), ("lenet5_cifar", 16), ("mnist_cnn", 6),
                                       ("alexnet_small", 15), ("alexnet", 63), ("vgg16", 32)])
def test_min_input_size_is_the_smallest_that_works(name, size):
    with torch.device("meta"):  # shapes are all this needs; PyTorch checks them on meta tensors too
        model = MODELS.get(name)(num_classes=NUM_CLASSES, in_channels=1).eval()
        assert info_of(model).min_input_size == size
        assert model(torch.zeros(1, 1, size, size)).shape == (1, NUM_CLASSES)
        with pytest.raises(RuntimeError):  # a conv or pool runs out of pixels, before any lazy layer
            model(torch.zeros(1, 1, size - 1, size - 1))


# ----------------------------------------------------------------------------- MLP and simple CNN


def test_mlp_xavier_init_and_dropout_placement():
    model = built("mlp", 1, 28, hidden=[512], init="xavier_uniform", dropout=0.2)
    first = model.hidden[0]
    bound = math.sqrt(6 / (784 + 512))
    assert first.weight.abs().max() <= bound and first.weight.abs().max() > 0.9 * bound
    assert (first.bias == 0).all() and (model.fc.bias == 0).all()
    assert [type(m).__name__ for m in model.hidden] == ["Linear", "ReLU", "Dropout"]


def test_mlp_as_study_c_ran_it():
    """Study C's report lists Linear → Dropout → ReLU for every hidden layer (also the last, 10-unit one),
    then Linear 10→10 and Softmax: 61,720 parameters, probabilities out."""
    hidden = [64, 64, 64, 32, 16, 16, 10]
    model = MODELS.get("mlp")(num_classes=10, in_channels=1, hidden=hidden, dropout=0.1,
                              dropout_before_act=True, softmax_output=True)
    out = model.eval()(torch.randn(3, 1, 28, 28))
    names = [type(m).__name__ for m in model.hidden]
    assert names == ["Linear", "Dropout", "ReLU"] * len(hidden)
    assert [m.out_features for m in model.hidden if isinstance(m, nn.Linear)] == hidden
    assert (model.fc.in_features, model.fc.out_features) == (10, 10) and isinstance(model.out, nn.Softmax)
    assert n_params(model) == 61_720
    assert info_of(model).output_kind == "probs"
    torch.testing.assert_close(out.sum(1), torch.ones(3))
    assert info_of(built("mlp", 1, 28, hidden=hidden)).output_kind == "logits"  # the default is unchanged
    assert [type(m).__name__ for m in built("mlp", 1, 28, hidden=[8], dropout=0.1).hidden] == ["Linear", "ReLU",
                                                                                                 "Dropout"]


def test_mlp_dropout_order_is_the_same_function_for_relu():
    """For ReLU, dropout before or after the activation gives the same outputs with the same masks, so the
    report's order changes the layer summary, not the training; for tanh it changes the network."""
    def both(activation):
        outs = []
        for before in (False, True):
            torch.manual_seed(0)
            model = MODELS.get("mlp")(num_classes=10, in_channels=1, hidden=[32, 16], dropout=0.3,
                                      activation=activation, dropout_before_act=before)
            x = torch.randn(8, 1, 28, 28)
            torch.manual_seed(1)
            outs.append(model.train()(x))
        return outs
    torch.testing.assert_close(*both("relu"))
    assert not torch.allclose(*both("tanh"))


def test_mnist_cnn_variants_differ_as_the_study_says():
    kinds = {v: built("mnist_cnn", 1, 28, variant=v) for v in ("base", "dropout", "batchnorm", "stride2", "kernel5")}
    assert all(info_of(m).output_kind == "log_probs" for m in kinds.values())
    assert [m.p for m in kinds["dropout"].modules() if isinstance(m, nn.Dropout)] == [0.4] * 3
    assert sum(isinstance(m, nn.BatchNorm1d) for m in kinds["batchnorm"].modules()) == 2
    s2 = kinds["stride2"]
    assert not any(isinstance(m, nn.MaxPool2d) for m in s2.modules())
    assert [m.stride for m in s2.modules() if isinstance(m, nn.Conv2d)] == [(1, 1), (2, 2)]
    assert [m.kernel_size for m in kinds["kernel5"].modules() if isinstance(m, nn.Conv2d)] == [(5, 5)] * 2


def test_alexnet_small_keeps_the_alexnet_pattern():
    model = built("alexnet_small", 3, 32)
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 3
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 2
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 5


# ----------------------------------------------------------------------------- ResNets


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_depth_is_6n_plus_2(depth):
    with torch.device("meta"):
        model = MODELS.get(f"resnet{depth}")()
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth
    assert info_of(model).stages == ("layer1", "layer2", "layer3")
    assert [len(model.get_submodule(s)) for s in info_of(model).stages] == [(depth - 2) // 6] * 3


def test_option_a_shortcut_subsamples_and_zero_pads():
    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, stride=2)(x)
    assert y.shape == (2, 32, 4, 4)
    torch.testing.assert_close(y[:, 8:24], x[:, :, ::2, ::2])
    assert (y[:, :8] == 0).all() and (y[:, 24:] == 0).all()


def test_torchvision_adaptations():
    grey = MODELS.get("resnet18")(num_classes=NUM_CLASSES, in_channels=1)
    assert grey.conv1.in_channels == 1 and grey.conv1.kernel_size == (7, 7)
    cifar = MODELS.get("resnet18")(num_classes=NUM_CLASSES, in_channels=3, stem="cifar")
    assert cifar.conv1.kernel_size == (3, 3) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, nn.Identity) and info_of(cifar).input_size == 32
    seen = {}
    cifar.layer4.register_forward_hook(lambda m, i, o: seen.update(shape=o.shape))
    cifar.eval()(torch.zeros(1, 3, 32, 32))
    assert seen["shape"][-2:] == (4, 4)  # 32 → 32 → 16 → 8 → 4: resolution kept for small images
    with torch.device("meta"):
        vgg = MODELS.get("vgg16")(num_classes=NUM_CLASSES, in_channels=1)
        assert vgg.features[0].in_channels == 1 and info_of(vgg).head_name == "classifier.6"
        assert info_of(MODELS.get("resnet50")()).stages == ("layer1", "layer2", "layer3", "layer4")
