"""k-fold cross-validation (issue 27, item 2): data.folds / data.fold cut the training pool into stratified,
seeded folds (the test split untouched), a sweep file's ``folds: k`` runs every setting and seed once per fold,
each run saves its fold (fold.json, or splits.json for an image folder), and compare pools folds × seeds."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from data_files import cfg, real_root, write_png

from cnnlab import data
from cnnlab.config.load import load_config
from cnnlab.config.schema import ConfigError
from cnnlab.data.splits import fold_split, stratified_folds
from cnnlab.reporting.compare import compare
from cnnlab.sweeps.plan import plan_sweep
from cnnlab.sweeps.run import run_sweep


@pytest.fixture(scope="module")
def mnist_labels() -> torch.Tensor:
    return data.load_raw(cfg(name="mnist", root=str(real_root()))).train_y


def test_folds_are_disjoint_stratified_and_cover_the_pool(mnist_labels):
    k = 5
    fold_of = stratified_folds(mnist_labels, k, seed=3)
    assert fold_of.shape == mnist_labels.shape and set(fold_of.unique().tolist()) == set(range(k))  # every image in one
    sizes = torch.bincount(fold_of, minlength=k)
    assert sizes.max() - sizes.min() <= 1 and sizes.sum() == len(mnist_labels)
    counts = torch.bincount(mnist_labels)
    for f in range(k):
        per_class = torch.bincount(mnist_labels[fold_of == f], minlength=len(counts))
        assert ((per_class - counts.float() / k).abs() <= 1).all(), f  # each class's share, to within one image
    vals = [fold_split(mnist_labels, k, f, seed=3)[1] for f in range(k)]
    together = torch.cat(vals)
    assert len(together) == len(mnist_labels) and len(together.unique()) == len(mnist_labels)  # disjoint, covering
    train, val = fold_split(mnist_labels, k, 2, seed=3)
    assert not set(train.tolist()) & set(val.tolist()) and len(train) + len(val) == len(mnist_labels)


def test_folds_are_seeded(mnist_labels):
    a, b = stratified_folds(mnist_labels, 4, 0), stratified_folds(mnist_labels, 4, 0)
    assert torch.equal(a, b) and not torch.equal(a, stratified_folds(mnist_labels, 4, 1))


def test_an_imbalanced_class_is_dealt_evenly():
    labels = torch.tensor([0] * 50 + [1] * 7 + [2] * 3)
    fold_of = stratified_folds(labels, 3, 0)
    for c, n in ((0, 50), (1, 7), (2, 3)):
        per_fold = torch.bincount(fold_of[labels == c], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n


def test_mnist_folds_leave_the_test_split_untouched():
    root = str(real_root())
    plain = data.load_splits(cfg(name="mnist", root=root, train_limit=500))
    seen = []
    for f in range(3):
        s = data.load_splits(cfg(name="mnist", root=root, folds=3, fold=f, train_limit=500))
        assert torch.equal(s.test_x, plain.test_x) and torch.equal(s.test_y, plain.test_y)
        assert len(s.train_y) == 500 and not set(s.train_index.tolist()) & set(s.val_index.tolist())
        assert torch.equal(s.val_y, data.load_raw(cfg(name="mnist", root=root)).train_y[s.val_index])
        seen.append(set(s.val_index.tolist()))
    assert not (seen[0] & seen[1]) and len(seen[0] | seen[1] | seen[2]) == 60_000


def _flat_folder(root, per_class=(12, 9, 6)):
    rng = np.random.default_rng(0)
    for c, n in zip(("ant", "bee", "cat"), per_class):
        for i in range(n):
            write_png(root / c / f"{i:03d}.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))


def test_a_flat_folders_folds_keep_its_test_split(tmp_path):
    _flat_folder(tmp_path / "imgs")
    base = dict(name="imagefolder", root=str(tmp_path / "imgs"), test_size=0.25)
    plain = data.load_splits(cfg(**base))
    vals = []
    for f in range(3):
        s = data.load_splits(cfg(**base, folds=3, fold=f))
        assert s.files["test"] == plain.files["test"]  # the same test files as without folds
        assert not {p for p, _ in s.files["val"]} & {p for p, _ in s.files["train"]}
        assert sorted(s.files["val"] + s.files["train"]) == sorted(plain.files["train"] + plain.files["val"])
        vals.append({p for p, _ in s.files["val"]})
        pool = np.bincount([c for _, c in plain.files["train"] + plain.files["val"]], minlength=3)  # 9 / 7 / 4
        assert (np.abs(np.bincount([c for _, c in s.files["val"]], minlength=3) - pool / 3) <= 1).all()
    assert not (vals[0] & vals[1] or vals[1] & vals[2] or vals[0] & vals[2])


@pytest.mark.parametrize("overrides, words", [
    ({"data.folds": 5}, "data.folds and data.fold go together"),
    ({"data.fold": 1}, "data.folds and data.fold go together"),
    ({"data.folds": 3, "data.fold": 3}, "not one of the 3 folds"),
    ({"data.folds": 3, "data.fold": 0, "data.val_size": 1000}, "leave data.val_size unset"),
])
def test_inconsistent_fold_settings_are_refused(overrides, words):
    with pytest.raises(ConfigError, match=words):
        load_config(None, overrides)


TINY = {"data": {"name": "mnist", "train_limit": 300, "download": False},
        "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 100, "progress": False, "precision": "fp32", "threads": 1}}


def test_a_sweeps_folds_run_every_setting_and_seed_once_per_fold():
    s = plan_sweep({"base": TINY, "axes": {"optim.lr": [0.01, 0.001]}, "seeds": 2, "folds": 3})
    assert len(s.runs) == 2 * 2 * 3 and s.folds == 3 and s.to_dict()["folds"] == 3
    assert len({r.run_id for r in s.runs}) == 12
    for r in s.runs:
        assert r.config.data.folds == 3 and set(r.settings) == {"optim.lr"}  # the fold is no setting
    cells: dict = {}
    for r in s.runs:
        cells.setdefault((r.settings["optim.lr"], r.seed), []).append(r.config.data.fold)
    assert len(cells) == 4 and all(sorted(folds) == [0, 1, 2] for folds in cells.values())


@pytest.mark.parametrize("spec, words", [
    ({"folds": 1}, "folds must be a number of folds from 2 to 20"),
    ({"folds": "5"}, "folds must be a number"),
    ({"folds": 3, "base": {**TINY, "data": {**TINY["data"], "val_size": 100}}}, "leave data.val_size unset"),
    ({"folds": 3, "base": {**TINY, "data": {**TINY["data"], "folds": 3, "fold": 0}}}, "keep one"),
])
def test_bad_folds_in_a_sweep_file_are_named(spec, words):
    with pytest.raises(ConfigError, match=words):
        plan_sweep({"base": TINY, **spec})


def test_a_cross_validated_sweep_saves_each_fold_and_compare_pools_them(tmp_path):
    _flat_folder(tmp_path / "imgs")  # 27 images of 8 x 8: a sweep of 3 folds x 2 seeds in seconds
    study = {"data": {"name": "imagefolder", "root": str(tmp_path / "imgs"), "test_size": 0.25},
             "model": {"name": "linear"}, "optim": {"name": "adam", "lr": 0.01},
             "train": {"epochs": 2, "batch_size": 8, "progress": False, "precision": "fp32", "threads": 1}}
    sweep_file = tmp_path / "cv.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": study, "folds": 3, "seeds": 2}))
    rows = run_sweep(sweep_file, out_dir=tmp_path / "out")
    assert len(rows) == 6 and all(r["status"] == "completed" for r in rows)
    records = [json.loads((tmp_path / "out" / r["run_dir"] / "fold.json").read_text()) for r in rows]
    assert sorted(rec["fold"] for rec in records) == [0, 0, 1, 1, 2, 2] and all(rec["folds"] == 3 for rec in records)
    saved = [json.loads((tmp_path / "out" / r["run_dir"] / "splits.json").read_text())["files"] for r in rows]
    vals = [{p for p, _ in f["val"]} for f in saved]
    by_fold = {rec["fold"]: v for rec, v in zip(records, vals)}
    assert not (by_fold[0] & by_fold[1] or by_fold[1] & by_fold[2] or by_fold[0] & by_fold[2])  # disjoint
    assert len(set().union(*by_fold.values())) == 20 and all(f["test"] == saved[0]["test"] for f in saved)
    table = compare(tmp_path / "out").markdown()
    assert "(6)" in table and "Cross-validation: each cell pools its runs over 3 folds" in table
