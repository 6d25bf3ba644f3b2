"""Transfer learning: where the starting weights come from (real files in a temporary
TORCH_HOME, run folders), what happens when they do not fit, and which parameters and
batch-norm statistics a freeze policy lets change during real optimiser steps."""
import os
import urllib.request
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import cnnlab.models  # noqa: F401
from cnnlab.models import transfer
from cnnlab.config.load import load_config
from cnnlab.models import info_of
from cnnlab.registry import MODELS, ModelInfo, attach_info
from cnnlab.models.transfer import TransferError


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches; idle OpenMP threads would only spin
    yield
    torch.set_num_threads(before)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty TORCH_HOME: torchvision's weights cache is $TORCH_HOME/hub/checkpoints."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    return home


def config(**overrides):
    return load_config(None, {"train.progress": False, **overrides})


def imagenet_file(torch_home: Path) -> tuple[Path, dict]:
    """A torchvision-format ResNet-18 state dict where torchvision looks for its ImageNet weights."""
    url = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.manual_seed(123)
    state = torchvision.models.resnet18(weights=None).state_dict()
    path = folder / Path(url).name
    torch.save(state, path)
    return path, state


def fake_run(folder: Path, model: nn.Module, name: str, features_at=None) -> Path:
    """A run folder as the trainer leaves it: best.pt with the weights under "model"."""
    folder.mkdir(parents=True)
    ckpt = {"model": model.state_dict(), "step": 3, "epoch": 1,
            "config": {"model": {"name": name, "features_at": features_at}}}
    torch.save(ckpt, folder / "best.pt")
    return folder


# ----------------------------------------------------------------------------- ImageNet weights


def test_pretrained_imagenet_loads_from_torch_home(torch_home):
    path, state = imagenet_file(torch_home)
    model, log = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet18",
                                                "model.pretrained": "imagenet"}), 10, 3)
    assert torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    assert torch.equal(model.bn1.running_var, state["bn1.running_var"])
    assert model.fc.out_features == 10  # 1,000 ImageNet classes → a fresh 10-class head
    assert any(path.name in line for line in log)
    assert any("`fc` has 1000 outputs" in line for line in log)


def test_pretrained_on_grey_images_sums_the_rgb_filters(torch_home):
    _, state = imagenet_file(torch_home)
    model, log = transfer.build_model(config(**{"model.name": "resnet18", "model.pretrained": "imagenet"}), 10, 1)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert any("summed" in line for line in log)


def test_missing_imagenet_weights_say_which_file_goes_where(torch_home, monkeypatch):
    # No file in the cache, and downloads fail at once: every request goes to a closed local port.
    for var in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    urllib.request.install_opener(None)  # urllib caches its opener (and proxies) after the first request
    try:
        with pytest.raises(TransferError) as err:
            transfer.build_model(config(**{"model.name": "resnet18", "model.pretrained": "imagenet"}), 10, 3)
    finally:
        urllib.request.install_opener(None)
    text = str(err.value)
    name = Path(torchvision.models.ResNet18_Weights.IMAGENET1K_V1.url).name
    assert str(torch_home / "hub" / "checkpoints" / name) in text
    assert "TORCH_HOME" in text and "weights_path" in text


def test_pretrained_needs_a_torchvision_network():
    with pytest.raises(TransferError, match="only for torchvision"):
        transfer.build_model(config(**{"model.name": "lenet5", "model.pretrained": "imagenet"}), 10, 1)


# ----------------------------------------------------------------------------- files and runs


def test_weights_path_loads_a_state_dict_and_replaces_a_head_of_another_size(tmp_path):
    torch.manual_seed(1)
    source = MODELS.get("lenet5")(num_classes=10, in_channels=1)
    source(torch.zeros(1, 1, 28, 28))
    path = tmp_path / "lenet.pth"
    torch.save(source.state_dict(), path)
    model, log = transfer.build_model(config(**{"model.weights_path": str(path)}), 10, 1)
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert log == []
    five, log = transfer.build_model(config(**{"model.weights_path": str(path)}), 5, 1)
    assert five.fc.out_features == 5 and any("replaced" in line for line in log)
    assert torch.equal(five.hidden[0].weight, source.hidden[0].weight)


def test_init_from_a_run_folder_or_its_checkpoint(tmp_path):
    torch.manual_seed(2)
    trained = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    run = fake_run(tmp_path / "run", trained, "resnet20")
    for where in (run, run / "best.pt"):
        model, _ = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet20",
                                                  "model.init_from": str(where)}), 10, 3)
        for key, value in trained.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key


def test_init_from_a_whole_network_into_its_features(tmp_path):
    torch.manual_seed(3)
    trained = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    run = fake_run(tmp_path / "run", trained, "resnet20")
    model, _ = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet20",
                                              "model.init_from": str(run), "model.features_at": "layer2"}), 10, 3)
    assert torch.equal(model.layer2[2].conv2.weight, trained.layer2[2].conv2.weight)
    assert not hasattr(model, "layer3") and model.fc.in_features == 32


def test_another_architecture_is_refused_with_the_keys_that_differ(tmp_path):
    lenet = MODELS.get("lenet5")(num_classes=10, in_channels=3)
    lenet(torch.zeros(1, 3, 32, 32))
    run = fake_run(tmp_path / "run", lenet, "lenet5")
    with pytest.raises(TransferError) as err:
        transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet20",
                                       "model.init_from": str(run)}), 10, 3)
    text = str(err.value)
    assert "features.0.weight" in text and "conv1.weight" in text and "'lenet5'" in text
    assert isinstance(err.value, RuntimeError)


class _RunsCode:
    """An object whose unpickling would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("field", ["model.weights_path", "model.init_from"])
def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, field):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "payload": _RunsCode(marker)}, path)
    with pytest.raises(TransferError, match="refused"):
        transfer.build_model(config(**{field: str(path)}), 10, 1)
    assert not marker.exists()


def test_features_at_cuts_the_network_and_adds_a_linear_head():
    model, log = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet18",
                                                "model.features_at": "layer3"}), 10, 3)
    assert [n for n, _ in model.named_children()] == ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2",
                                                       "layer3", "global_pool", "fc"]
    info = info_of(model)
    assert model.fc.in_features == 256 and info.stages == ("layer1", "layer2", "layer3")
    assert (info.head_name, info.features_at, info.name, info.input_conv) == ("fc", "layer3", "resnet18", "conv1")
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10) and log
    with pytest.raises(TransferError, match="layer4"):  # the message lists the valid names
        transfer.cut_at(MODELS.get("resnet18")(), "layer9", 10, 3)


def test_linear_without_features_at_is_softmax_regression_on_pixels():
    model, _ = transfer.build_model(config(**{"model.name": "linear"}), 10, 1)
    assert sum(p.numel() for p in model.parameters()) == 7850  # sized from MNIST's 28 px at build time


# ----------------------------------------------------------------------------- freeze policies


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(model, optim_overrides=None, steps=3):
    torch.manual_seed(0)
    cfg = config(**{"optim.name": "sgd", "optim.lr": 0.1, "optim.momentum": 0.9, "optim.weight_decay": 0.01,
                    **(optim_overrides or {})})
    from cnnlab.training.optim import build_optimizer

    opt = build_optimizer(transfer.param_groups(model, cfg.optim), cfg.optim)
    transfer.set_train_mode(model, True)
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


def changed(before, model):
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_head_mode_leaves_the_backbone_and_its_bn_statistics_untouched():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "head")
    before = snapshot(model)
    train_steps(model)
    assert changed(before, model) == {"fc.weight", "fc.bias"}  # running stats and counters included
    assert all(not bn.training for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))


def test_layer_mode_trains_that_stage_and_the_head_only():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "layer3")
    before = snapshot(model)
    train_steps(model)
    diff = changed(before, model)
    assert diff and all(k.startswith(("layer3.", "fc.")) for k in diff)
    assert "layer3.0.bn1.running_mean" in diff  # batch norm of the trained stage does learn statistics
    assert {"layer3.0.conv1.weight", "fc.weight"} <= diff


def test_freeze_bn_false_lets_frozen_statistics_update():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "head", freeze_bn=False)
    before = snapshot(model)
    train_steps(model, steps=1)
    diff = changed(before, model)
    assert "layer1.0.bn1.running_mean" in diff and "layer1.0.conv1.weight" not in diff


def test_finetune_policies_and_their_errors():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    trainable = lambda: {n for n, p in model.named_parameters() if p.requires_grad}  # noqa: E731
    transfer.apply_finetune(model, ["layer2.1", "fc."])
    assert trainable() and all(n.startswith(("layer2.1.", "fc.")) for n in trainable())
    transfer.apply_finetune(model, "none")
    assert trainable() == set()
    transfer.apply_finetune(model, "all")
    assert len(trainable()) == len(list(model.parameters()))
    with pytest.raises(TransferError, match="layer4"):
        transfer.apply_finetune(model, "layer4")  # a CIFAR ResNet has three stages
    with pytest.raises(TransferError, match="no stages"):
        transfer.apply_finetune(MODELS.get("lenet5")(), "layer1")
    with pytest.raises(TransferError, match="top-level"):
        transfer.apply_finetune(model, ["backbone"])


def test_param_groups_give_the_head_its_lr_and_spare_norms_and_biases_from_decay():
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "layer3")
    cfg = config(**{"optim.lr": 0.001, "optim.head_lr": 0.1, "optim.weight_decay": 1e-4,
                    "optim.no_decay_norm_bias": True})
    groups = {g["name"]: g for g in transfer.param_groups(model, cfg.optim)}
    assert set(groups) == {"body", "body_no_decay", "head", "head_no_decay"}
    assert groups["head"]["lr"] == groups["head_no_decay"]["lr"] == 0.1 and "lr" not in groups["body"]
    assert groups["body_no_decay"]["weight_decay"] == 0.0 and "weight_decay" not in groups["body"]
    assert [p.shape for p in groups["head"]["params"]] == [(10, 64)]
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    transfer.apply_finetune(model, "none")
    assert transfer.param_groups(model, cfg.optim)[0]["params"] == []


def test_norm_bias_lr_scale_gives_batch_norm_shifts_airbench_s_lr_and_keeps_lr_times_decay():
    from cnnlab.training.optim import build_optimizer, build_schedule

    model = MODELS.get("airbench")(num_classes=10, in_channels=3, widths=[8, 16, 16])
    cfg = config(**{"optim.name": "sgd", "optim.lr": 0.75, "optim.weight_decay": 0.0013,
                    "optim.norm_bias_lr_scale": 64, "sched.name": "onecycle", "sched.max_lr": 1.5})
    groups = {g["name"]: g for g in transfer.param_groups(model, cfg.optim)}
    assert set(groups) == {"body", "body_norm_bias"}
    shifts = [m.bias for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(shifts) == 6 and {id(p) for p in groups["body_norm_bias"]["params"]} == {id(p) for p in shifts}
    assert id(model.whiten.bias) not in {id(p) for p in groups["body_norm_bias"]["params"]}  # not a norm
    assert groups["body_norm_bias"]["lr"] == pytest.approx(48.0)
    assert groups["body_norm_bias"]["lr"] * groups["body_norm_bias"]["weight_decay"] == pytest.approx(0.75 * 0.0013)
    grouped = [id(p) for g in groups.values() for p in g["params"]]
    assert sorted(grouped) == sorted(id(p) for p in model.parameters() if p.requires_grad)
    opt = build_optimizer(list(groups.values())[::-1], cfg.optim)  # the scaled group first: max_lr still from optim.lr
    build_schedule(opt, cfg.sched, 100, 1)
    assert [g["max_lr"] for g in opt.param_groups] == pytest.approx([96.0, 1.5])
    assert transfer.param_groups(model, config().optim)[0]["name"] == "body"  # scale 1: one group, as before


# ----------------------------------------------------------------------------- frozen backbone, computed once


def test_split_frozen_backbone_gives_the_same_training():
    def make():
        torch.manual_seed(5)
        m, _ = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet20",
                                              "model.features_at": "layer3"}), 10, 3)
        transfer.apply_finetune(m, "head")
        return m

    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    full, split_model = make(), make()
    backbone, rest = transfer.split_frozen(split_model, example=x[:4])
    assert backbone is not None and rest.head is split_model.fc
    backbone.eval()
    with torch.inference_mode():
        features = backbone(x)
    assert features.shape == (16, 64)

    def fit(model, inputs):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(inputs), y).backward()
            opt.step()

    transfer.set_train_mode(full, True)
    fit(full, x)
    fit(rest, features.clone())
    torch.testing.assert_close(split_model.fc.weight, full.fc.weight)
    torch.testing.assert_close(split_model.fc.bias, full.fc.bias)
    assert changed(snapshot(full), split_model) <= {"fc.weight", "fc.bias"}


class _ScaledHead(nn.Module):
    """A net that does more after its head than a softmax (like airbench's output scale)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 10)
        attach_info(self, ModelInfo(family="test", head_name="fc"))

    def forward(self, x):
        return self.fc(self.conv(x).mean((2, 3))) / 9


def test_split_frozen_refuses_when_it_would_change_training():
    x = torch.randn(4, 3, 32, 32)
    model = MODELS.get("resnet20")(num_classes=10, in_channels=3)
    transfer.apply_finetune(model, "all")
    assert transfer.split_frozen(model, x)[0] is None  # the backbone trains
    small = MODELS.get("alexnet_small")(num_classes=10, in_channels=1)
    small(torch.zeros(1, 1, 28, 28))
    transfer.apply_finetune(small, "head")
    assert transfer.split_frozen(small, x[:, :1, :28, :28])[0] is None  # dropout before the head
    transfer.apply_finetune(model, "head", freeze_bn=False)
    assert transfer.split_frozen(model, x)[0] is None  # batch norm would update its statistics
    scaled = _ScaledHead()
    transfer.apply_finetune(scaled, "head")
    assert transfer.split_frozen(scaled, x)[0] is None  # rest(backbone(x)) would miss the / 9


class _OutOfOrder(nn.Module):
    """Layers defined in one order and run in another: keeping "the layers before" is wrong."""

    def __init__(self):
        super().__init__()
        self.conv2 = nn.Conv2d(8, 8, 3)
        self.conv1 = nn.Conv2d(3, 8, 3)
        self.fc = nn.Linear(8, 10)
        attach_info(self, ModelInfo(family="test", head_name="fc"))

    def forward(self, x):
        return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))


def test_a_cut_that_would_not_reproduce_the_network_is_refused():
    with pytest.raises(TransferError, match="order"):
        transfer.cut_at(_OutOfOrder(), "conv1", 10, 3)
    probe = transfer.cut_at(MODELS.get("resnet20")(), "layer2", 10, 3)
    assert [n for n, _ in probe.named_children()][-3:] == ["layer2", "global_pool", "fc"]


def test_cached_features_run_the_backbone_once_per_split_even_an_empty_one():
    from types import SimpleNamespace

    from cnnlab.training.scoring import Evaluator

    torch.manual_seed(5)
    m, _ = transfer.build_model(config(**{"data.name": "cifar10", "model.name": "resnet20",
                                          "model.features_at": "layer3"}), 10, 3)
    transfer.apply_finetune(m, "head")
    images = torch.randint(0, 256, (10, 3, 32, 32), dtype=torch.uint8)
    splits = SimpleNamespace(train_x=images[:7], train_y=torch.arange(7), val_x=images[:0],
                             val_y=torch.arange(0), test_x=images[7:], test_y=torch.arange(3),
                             num_classes=10, classes=[str(i) for i in range(10)])
    pre = lambda x, g: x.float() / 255  # noqa: E731
    backbone, _ = transfer.split_frozen(m, example=pre(images[:4], None))
    ev = Evaluator(pre, 4, "fp32", torch.device("cpu"), "logits", 10)  # batches of 4: 7 train images take 2
    feats = transfer.cached_features(backbone, splits, ev)
    assert feats.train_x.shape == (7, 64) and feats.val_x.shape == (0, 64) and feats.test_x.shape == (3, 64)
    assert torch.equal(feats.test_y, splits.test_y) and feats.classes == splits.classes
    with torch.no_grad():
        torch.testing.assert_close(feats.train_x, backbone(pre(images[:7], None)))
