"""Relative paths (issue 25, item 3): a relative data.root (model.weights_path, model.init_from) in a study file is
relative to that file, as ``base:`` in a sweep file is relative to the sweep file; one in an inline base or an
axis of a sweep file is relative to the sweep file; a command-line override is relative to the working
directory. Each is made absolute when the file is read, before any worker starts, and a missing folder is
named as the absolute folder looked in. (The Ray run of it: tests/test_sweep_ray.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import cnnlab_here, write_image_folder
from cnnlab.config.load import load_config
from cnnlab.sweeps.plan import load_sweep
from cnnlab.sweeps.run import _task, run_sweep

STUDY = {"data": {"name": "imagefolder", "root": "../photos", "resize": 8, "val_size": 0.25, "test_size": 0.25},
         "model": {"name": "linear"},
         "train": {"epochs": 1, "batch_size": 4, "progress": False, "precision": "fp32", "threads": 1}}


@pytest.fixture(autouse=True)
def cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))


def write(path: Path, spec: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def project(tmp_path: Path) -> Path:
    """project/photos/<class>/, project/studies/photos.yaml (root: ../photos), project/sweeps/sw.yaml
    (base: ../studies/photos.yaml); the working directory is somewhere else."""
    root = tmp_path / "project"
    write_image_folder(root / "photos", ["cat", "dog"], per_class=4, size=(10, 12))
    write(root / "studies" / "photos.yaml", STUDY)
    write(root / "sweeps" / "sw.yaml", {"base": "../studies/photos.yaml", "axes": {"optim.lr": [0.01, 0.001]}})
    return root


def test_a_study_files_relative_root_is_the_files_and_an_overrides_is_the_working_directorys(tmp_path,
                                                                                              monkeypatch):
    root = project(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config(root / "studies" / "photos.yaml")
    assert cfg.data.root == str(root / "photos")  # absolute, from the study file's folder
    (elsewhere / "prev").mkdir()
    cfg = load_config(root / "studies" / "photos.yaml", ["data.root=pics", "model.init_from=prev"])
    assert cfg.data.root == str(elsewhere / "pics") and cfg.model.init_from == str(elsewhere / "prev")
    cfg = load_config(root / "studies" / "photos.yaml", [f"data.root={root / 'photos'}"])
    assert cfg.data.root == str(root / "photos")  # an absolute path is kept as it is


def test_a_sweep_reads_each_bases_paths_from_the_file_that_names_them(tmp_path, monkeypatch):
    root = project(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert {r.config.data.root for r in load_sweep(root / "sweeps" / "sw.yaml").runs} == {str(root / "photos")}
    inline = write(root / "sweeps" / "inline.yaml", {"base": {**STUDY, "data": {**STUDY["data"], "root": "../photos"}},
                                                      "axes": {"optim.lr": [0.01]}})
    assert load_sweep(inline).runs[0].config.data.root == str(root / "photos")  # the sweep file's folder
    axis = write(root / "sweeps" / "axis.yaml", {"base": "../studies/photos.yaml", "axes": {"data.root": ["../pics"]}})
    run = load_sweep(axis).runs[0]
    task = _task(run, tmp_path / "out", "new", quiet=True, folder=axis.parent)  # what a worker or trial is given
    assert task["config"]["data"]["root"] == str(root / "pics") and run.settings == {"data.root": "../pics"}


def test_a_sweep_run_from_another_folder_trains_on_the_study_files_folder(tmp_path, monkeypatch, data_root):
    root = project(tmp_path)
    monkeypatch.chdir(tmp_path)  # neither the sweep's nor the study's folder
    rows = run_sweep(root / "sweeps" / "sw.yaml", out_dir=tmp_path / "out")
    assert [r["status"] for r in rows] == ["completed", "completed"], rows


def test_a_missing_folder_is_named_as_the_absolute_folder_looked_in(tmp_path, monkeypatch, capsys):
    root = project(tmp_path)
    write(root / "studies" / "typo.yaml", {**STUDY, "data": {**STUDY["data"], "root": "../fotos"}})
    monkeypatch.chdir(tmp_path)
    assert cnnlab_here("train", root / "studies" / "typo.yaml", "--out", tmp_path / "run") == 2
    out = capsys.readouterr()
    assert f"{root / 'fotos'} is not a folder" in out.out + out.err
