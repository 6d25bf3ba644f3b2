"""Calibration (issue 27, item 4): ECE against a hand computation, temperature scaling of an over-confident run,
predict with the fitted temperature."""
import math

import pytest
import torch

import cnnlab
from cnnlab.training.calibration import calibration_scores, fit_temperature, nll
from conftest import tiny_overrides


def test_ece_matches_a_hand_computation():
    probs = torch.tensor([[0.95, 0.03, 0.02],   # label 0: right, confidence 0.95 -> bin 14 (14/15 < p <= 1)
                          [0.01, 0.97, 0.02],   # label 0: wrong, 0.97 -> bin 14
                          [0.62, 0.30, 0.08],   # label 0: right, 0.62 -> bin 9 (0.600 < p <= 0.667)
                          [0.20, 0.35, 0.45],   # label 1: wrong, 0.45 -> bin 6 (0.400 < p <= 0.467)
                          [0.45, 0.40, 0.15]])  # label 0: right, 0.45 -> bin 6
    labels = torch.tensor([0, 0, 0, 1, 0])
    conf, pred = probs.max(1)
    r = calibration_scores(conf, pred == labels)
    # bin 14: accuracy 1/2, confidence 0.96, 2 of 5; bin 9: 1 vs 0.62, 1 of 5; bin 6: 1/2 vs 0.45, 2 of 5
    hand = 2 / 5 * abs(0.5 - 0.96) + 1 / 5 * abs(1 - 0.62) + 2 / 5 * abs(0.5 - 0.45)
    assert hand == pytest.approx(0.28)
    assert r["ece"] == pytest.approx(hand, abs=1e-6)
    rel = r["reliability"]
    assert rel["bins"] == 15 and sum(rel["count"]) == 5
    assert [i for i, c in enumerate(rel["count"]) if c] == [6, 9, 14]
    assert rel["accuracy"][14] == 0.5 and rel["confidence"][14] == pytest.approx(0.96, abs=1e-6)
    assert rel["accuracy"][0] is None  # an empty bin has no mean


def test_perfectly_calibrated_bins_score_zero_and_empty_input_scores_none():
    conf = torch.tensor([0.9] * 10)
    correct = torch.tensor([True] * 9 + [False])
    assert calibration_scores(conf, correct)["ece"] == pytest.approx(0.0, abs=1e-6)  # 0.9 in float32
    assert calibration_scores(torch.zeros(0), torch.zeros(0, dtype=torch.bool)) == {"ece": None, "reliability": None}


def test_temperature_scaling_recovers_a_known_temperature():
    """Labels drawn from softmax(z); the network reports 3 z (over-confident): the fitted T is about 3."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 5, generator=g, dtype=torch.float64) * 2
    y = torch.multinomial(z.softmax(1), 1, generator=g).squeeze(1)
    t = fit_temperature((3 * z).log_softmax(1), y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(3 * z, y, t) < nll(3 * z, y)


@pytest.fixture(scope="module")
def overconfident_run(tmp_path_factory, data_root):
    """LeNet-5 trained to 100 % on 300 MNIST images: sure of itself beyond its validation accuracy."""
    out = tmp_path_factory.mktemp("cal") / "run"
    overrides = {**tiny_overrides(), "data.train_limit": 300, "train.epochs": 15, "train.batch_size": 50,
                 "train.threads": 1}
    return cnnlab.train({}, overrides, out=out, report=False)


def test_a_run_records_ece_and_a_temperature_that_lowers_the_validation_nll(overconfident_run):
    s = overconfident_run.summary
    for split in ("train", "val", "test"):
        assert 0 <= s[split]["ece"] <= 1
        assert sum(s[split]["reliability"]["count"]) == sum(s[split]["per_class"]["support"])
    cal = s["calibration"]
    assert cal["fitted_on"] == "val"
    assert cal["temperature"] > 1  # over-confident: the probabilities are softened
    assert cal["val_nll_calibrated"] < cal["val_nll"]
    assert cal["val_nll"] == pytest.approx(s["val"]["loss"], rel=1e-4)  # the same outputs the split was scored on
    assert cal["test_ece"] == pytest.approx(s["test"]["ece"], abs=1e-5)


def test_predict_calibrated_keeps_the_class_and_softens_the_probabilities(overconfident_run):
    from cnnlab import data as datamod

    run = cnnlab.load(overconfident_run.dir)
    assert run.temperature == overconfident_run.summary["calibration"]["temperature"]
    images = datamod.load_splits(run.config.data, "cpu").test_x[:64]
    plain, calibrated = run.probabilities(images), run.probabilities(images, calibrated=True)
    assert torch.equal(plain.argmax(1), calibrated.argmax(1))
    assert (calibrated.amax(1) <= plain.amax(1) + 1e-6).all() and (calibrated.amax(1) < plain.amax(1)).any()
    assert calibrated.sum(1).sub(1).abs().max() < 1e-5
    rows, rows_cal = run.predict(images[:8]), run.predict(images[:8], calibrated=True)
    assert [r["class"] for r in rows] == [r["class"] for r in rows_cal]
    assert all(c["probability"] <= r["probability"] + 1e-6 for r, c in zip(rows, rows_cal))
    t = run.temperature  # softmax(log p / T) by hand
    by_hand = (plain.double().log() / t).softmax(1)
    assert torch.allclose(calibrated.double(), by_hand, atol=1e-4)
    assert math.isfinite(t)


def test_calibrated_refused_without_a_temperature(overconfident_run, tmp_path):
    """A run folder from before calibration (no summary.json calibration): refused, naming why."""
    import json
    import shutil

    old = tmp_path / "old"
    shutil.copytree(overconfident_run.dir, old)
    summary = json.loads((old / "summary.json").read_text())
    del summary["calibration"]
    (old / "summary.json").write_text(json.dumps(summary))
    run = cnnlab.load(old)
    assert run.temperature is None
    assert len(run.predict(torch.zeros(1, 28, 28, dtype=torch.uint8))) == 1
    with pytest.raises(cnnlab.api.ConfigError, match="no temperature"):
        run.predict(torch.zeros(1, 28, 28, dtype=torch.uint8), calibrated=True)


def test_predict_command_with_and_without_calibration(overconfident_run, tmp_path, capsys):
    from PIL import Image

    from cnnlab import data as datamod
    from conftest import cnnlab_here

    run = cnnlab.load(overconfident_run.dir)
    for i, image in enumerate(datamod.load_splits(run.config.data, "cpu").test_x[:16]):
        Image.fromarray(image[0].numpy()).save(tmp_path / f"{i}.png")
    tables = {}
    for flags in ((), ("--calibrated",)):
        assert cnnlab_here("predict", overconfident_run.dir, tmp_path, "--top-k", "1", *flags) == 0
        lines = capsys.readouterr().out.splitlines()[1:]
        tables[flags] = [(line.split()[1], float(line.split()[2])) for line in lines]
    plain, calibrated = tables[()], tables[("--calibrated",)]
    assert [c for c, _ in plain] == [c for c, _ in calibrated]
    assert all(q <= p for (_, p), (_, q) in zip(plain, calibrated))  # T > 1: softer (as printed, 4 decimals)
    assert sum(q < p for (_, p), (_, q) in zip(plain, calibrated)) >= 4
