"""The speed-run networks: the whitening init really whitens, frozen parts stay frozen under
every finetune policy, the fast-MNIST net has the record's size, and the trainer calls the
whitening hook in a tiny real run. No timing here: speed is measured by benchmarks/."""
import pytest
import torch

import cnnlab.models  # noqa: F401 - fills the registry
from cnnlab.models import transfer
from cnnlab.models.airbench import WhiteningConv, init_whitening
from cnnlab.models import info_of
from cnnlab.registry import MODELS


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_images(n=300, channels=3, size=16):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, channels, size, size, generator=g)
    x = x + torch.roll(x, 1, dims=3)  # neighbouring pixels correlate
    if channels > 1:
        x[:, 1] += 0.8 * x[:, 0]  # and so do channels
    return x


@pytest.mark.parametrize("channels", [1, 3])
def test_whitening_gives_unit_decorrelated_outputs(channels):
    model = MODELS.get("airbench")(num_classes=10, in_channels=channels, width=4)
    x = correlated_images(channels=channels)
    init_whitening(model, x, eps=0.0)
    d = channels * 4
    out = torch.nn.functional.conv2d(x, model.whiten.weight)
    half = out[:, :d].permute(0, 2, 3, 1).reshape(-1, d)
    cov = half.T @ half / len(half)
    assert torch.allclose(cov, torch.eye(d), atol=1e-3)
    assert torch.equal(out[:, d:], -out[:, :d])  # the negated copies


def test_whitening_keeps_channels_last_and_is_not_a_parameter():
    model = MODELS.get("airbench")(num_classes=10, in_channels=3, width=4).to(memory_format=torch.channels_last)
    init_whitening(model, correlated_images())
    assert model.whiten.weight.is_contiguous(memory_format=torch.channels_last)
    names = {n for n, _ in model.named_parameters()}
    assert "whiten.weight" not in names and "whiten.bias" in names
    assert "whiten.weight" in model.state_dict()
    assert info_of(model).needs_whitening_init is True


def test_frozen_parts_stay_frozen_with_finetune_all():
    model = MODELS.get("airbench")(num_classes=10, in_channels=3, width=4)
    transfer.apply_finetune(model, "all")
    # batch norm learns only its shift: no scale parameter exists to be switched back on
    assert not any(n.endswith("norm1.weight") for n, _ in model.named_parameters())
    before = model.whiten.weight.clone()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(4, 3, 32, 32)).square().sum().backward()
    opt.step()
    assert torch.equal(model.whiten.weight, before)


def test_errors_are_clear():
    with pytest.raises(ValueError, match="no WhiteningConv"):
        init_whitening(MODELS.get("mnist_fast")(), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="channels"):
        init_whitening(MODELS.get("airbench")(in_channels=3, width=4), torch.zeros(2, 1, 28, 28))
    with pytest.raises(ValueError, match="widths"):
        MODELS.get("airbench")(widths=[8, 8])


def test_mnist_fast_matches_the_record_net():
    model = MODELS.get("mnist_fast")(num_classes=10, in_channels=1)
    # conv 1→24 5×5, conv 24→32 3×3, fc 800→256, fc 256→10, all with biases
    assert sum(p.numel() for p in model.parameters()) == 624 + 6944 + 205056 + 2570
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    wide = MODELS.get("mnist_fast")(width=16, batch_norm=True, dropout=0.1, hidden=[128])
    assert wide.conv1.out_channels == 48 and wide.conv2.out_channels == 64 and wide.fc1.out_features == 128


def test_the_trainer_calls_the_whitening_hook(tmp_path, tiny_config, data_root, monkeypatch, precision):
    # in each precision: bf16 once ended this run at chance (the zero-variance channel, airbench.NORM_EPS)
    from cnnlab.training import loop as train
    from cnnlab.models import airbench as module

    calls = []
    real = module.init_whitening

    def spy(model, images):
        calls.append(tuple(images.shape))
        real(model, images)

    monkeypatch.setattr(module, "init_whitening", spy)
    cfg = tiny_config(**{"model.name": "airbench", "model.width": 4, "optim.name": "sgd", "optim.lr": 0.2,
                         "optim.momentum": 0.9, "optim.nesterov": True, "train.batch_size": 50,
                         "train.precision": precision})
    summary = train.run(cfg, tmp_path / "run", log=lambda *_: None)
    assert calls and calls[0][1:] == (1, 28, 28) and summary["precision"]["used"] == precision
    assert summary["status"] == "completed" and summary["test"]["accuracy"] > 0.25  # 20 steps: well above chance (0.1)
