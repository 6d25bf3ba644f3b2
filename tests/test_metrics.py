import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, confusion_matrix as sk_confusion, precision_recall_fscore_support

from cnnlab.training.metrics import confusion_matrix, format_per_class, scores


def _compare_with_sklearn(true, pred, k):
    s = scores(confusion_matrix(torch.as_tensor(true), torch.as_tensor(pred), k))
    p, r, f, sup = precision_recall_fscore_support(true, pred, labels=list(range(k)), zero_division=0)
    assert s["accuracy"] == pytest.approx(accuracy_score(true, pred))
    np.testing.assert_allclose(s["per_class"]["precision"], p)
    np.testing.assert_allclose(s["per_class"]["recall"], r)
    np.testing.assert_allclose(s["per_class"]["f1"], f)
    assert s["per_class"]["support"] == list(sup)
    assert s["precision_macro"] == pytest.approx(p.mean())
    assert s["f1_macro"] == pytest.approx(f.mean())
    assert s["confusion"] == sk_confusion(true, pred, labels=list(range(k))).tolist()


@pytest.mark.parametrize("seed", range(5))
def test_random_predictions_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 12))
    true = rng.integers(0, k, 500)
    pred = np.where(rng.random(500) < 0.6, true, rng.integers(0, k, 500))
    _compare_with_sklearn(true, pred, k)


def test_class_never_predicted_or_absent():
    # class 2 never predicted (precision 0 by convention), class 3 absent from the truth
    true = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 3, 0, 1])
    _compare_with_sklearn(true, pred, 4)


def test_real_predictions_match_sklearn(data_root):
    # a nearest-class-mean classifier on real MNIST test images: real, imperfect predictions
    from cnnlab.config.load import load_config
    from cnnlab.data import load_splits

    s = load_splits(load_config(None, {"data.name": "mnist"}).data, torch.device("cpu"))
    x = s.train_x[:5000].flatten(1).float()
    y = s.train_y[:5000]
    means = torch.stack([x[y == c].mean(0) for c in range(10)])
    pred = torch.cdist(s.test_x.flatten(1).float(), means).argmin(1)
    _compare_with_sklearn(s.test_y.numpy(), pred.numpy(), 10)


def test_format_per_class_names_every_class():
    s = scores(confusion_matrix(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]), 2))
    text = format_per_class(s, ["cat", "dog"])
    assert "cat" in text and "dog" in text and "accuracy 0.6667" in text
