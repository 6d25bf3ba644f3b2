"""Class imbalance (issue 27, item 1): class weights, focal loss, the balanced sampler, balanced accuracy."""
import pytest
import torch
from torch import nn

from cnnlab.config.schema import Config, ConfigError
from cnnlab.data.batches import balanced_draw, train_batches
from cnnlab.config.load import load_config
from cnnlab.training.metrics import confusion_matrix, format_per_class, scores
from cnnlab.training.optim import build_loss, class_weights


def _batch():
    torch.manual_seed(0)
    return torch.randn(12, 3), torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 2, 2])


def test_class_weights_change_the_loss_as_computed_by_hand():
    out, y = _batch()
    w = torch.tensor([0.5, 2.0, 3.0])
    nll = -torch.log_softmax(out, 1)[torch.arange(12), y]
    hand = (w[y] * nll).sum() / w[y].sum()
    weighted = build_loss(Config().loss, 3, w)(out, y)
    assert torch.allclose(weighted, hand) and not torch.allclose(weighted, nll.mean())


def test_auto_weights_are_inverse_frequencies_of_mean_one():
    _, y = _batch()  # 8, 2, 2 images
    w = class_weights("auto", y, 3)
    assert torch.allclose(w, torch.tensor([1 / 8, 1 / 2, 1 / 2]) * 3 / (1 / 8 + 1)) and torch.isclose(w.mean(), torch.tensor(1.0))
    assert torch.equal(class_weights([1.0, 2.0, 3.0], y, 3), torch.tensor([1.0, 2.0, 3.0]))
    with pytest.raises(ConfigError, match="loss.class_weights: 2 weights for 3 classes"):
        class_weights([1.0, 2.0], y, 3)


def test_focal_with_gamma_0_is_cross_entropy_and_with_gamma_2_the_formula():
    out, y = _batch()
    w = torch.tensor([0.5, 2.0, 3.0])
    for weight in (None, w):
        ce = nn.CrossEntropyLoss(weight=weight)(out, y)
        focal0 = build_loss(load_config(None, {"loss.name": "focal", "loss.gamma": 0}).loss, 3, weight)(out, y)
        assert torch.allclose(focal0, ce)
    p = torch.softmax(out, 1)[torch.arange(12), y]
    hand = (-(1 - p) ** 2 * p.log()).mean()
    assert torch.allclose(build_loss(load_config(None, {"loss.name": "focal"}).loss, 3)(out, y), hand)


@pytest.mark.parametrize("overrides, field", [
    ({"loss.class_weights": [1.0, -1.0]}, "loss.class_weights"),
    ({"loss.class_weights": "inverse"}, "loss.class_weights"),
    ({"loss.class_weights": "auto", "loss.name": "mse"}, "loss.class_weights"),
    ({"loss.gamma": -1}, "loss.gamma"),
    ({"loss.name": "focal", "loss.label_smoothing": 0.1}, "loss.label_smoothing"),
    ({"data.sampler": "weighted"}, "data.sampler"),
])
def test_bad_imbalance_settings_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, overrides)


def test_the_balanced_sampler_draws_classes_about_equally_and_per_seed():
    y = torch.cat([torch.zeros(900), torch.ones(90), torch.full((10,), 2)]).long()  # 90 % / 9 % / 1 %
    draw = balanced_draw(y, seed=3, epoch=0)
    share = torch.bincount(y[draw], minlength=3).float() / len(y)
    assert len(draw) == len(y) and torch.all((share - 1 / 3).abs() < 0.05), share
    assert torch.equal(draw, balanced_draw(y, seed=3, epoch=0))  # deterministic per (seed, epoch)
    assert not torch.equal(draw, balanced_draw(y, seed=4, epoch=0)) and not torch.equal(draw, balanced_draw(y, 3, 1))
    x = torch.arange(len(y))
    whole = torch.cat([b for b, _ in train_batches(x, y, 64, 3, 0, sampler="balanced")])
    rest = torch.cat([b for b, _ in train_batches(x, y, 64, 3, 0, start=5, sampler="balanced")])
    assert torch.equal(whole, draw) and torch.equal(rest, whole[5 * 64:])  # resumed mid-epoch: the same draw


def test_balanced_accuracy_is_mean_recall_and_shown_when_classes_are_imbalanced():
    true = torch.tensor([0] * 90 + [1] * 10)
    pred = torch.zeros(100, dtype=torch.long)  # always class 0: 90 % accurate, balanced 50 %
    s = scores(confusion_matrix(true, pred, 2))
    assert s["accuracy"] == 0.9 and s["balanced_accuracy"] == 0.5
    assert "balanced accuracy 0.5000" in format_per_class(s, ["a", "b"])
    even = scores(confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 1]), 2))
    assert "balanced" not in format_per_class(even, ["a", "b"])
