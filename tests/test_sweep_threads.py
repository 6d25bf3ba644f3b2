"""Same run id, another thread count (issue 25, item 5): on a CPU, results depend on torch's thread count, which
--workers changes (cores // workers each). Each results row records the threads its run computed with, and a
sweep run again with another count warns before it mixes rows made both ways."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from cnnlab.reporting.results import RESULTS, cpu_threads, load_results, row_problem
from cnnlab.sweeps import local
from cnnlab.sweeps.run import mixed_threads, planned_threads, run_sweep

BASE = {"data": {"name": "mnist", "train_limit": 200, "val_size": 100}, "model": {"name": "linear"},
        "train": {"epochs": 1, "batch_size": 100, "progress": False, "precision": "fp32", "device": "cpu"}}


@pytest.fixture
def threads():
    """Set torch's thread count for the sweep process's own (one at a time) runs; put back afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def sweep(folder: Path, lrs: list[float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sw.yaml"
    path.write_text(yaml.safe_dump({"base": BASE, "axes": {"optim.lr": lrs}}, sort_keys=False))
    return path


def test_a_rerun_with_another_thread_count_warns_and_every_row_records_its_count(tmp_path, data_root, threads,
                                                                                   capsys):
    out = tmp_path / "out"
    threads(2)
    run_sweep(sweep(tmp_path, [0.01]), out)
    first = load_results(out)
    assert [r["threads"] for r in first] == [2] and row_problem(first[0]) is None
    assert "CPU threads" not in capsys.readouterr().err
    threads(1)  # as --workers 2 on two cores would give each run
    run_sweep(sweep(tmp_path, [0.01, 0.001]), out)  # one more run: made with 1 thread beside the row made with 2
    err = capsys.readouterr().err
    assert "1 runs in results.jsonl were trained with 2 CPU threads, and the 1 to run now will use 1" in err
    assert "the table would mix rows" in err
    assert sorted(r["threads"] for r in load_results(out)) == [1, 2]
    threads(1)
    run_sweep(sweep(tmp_path, [0.01, 0.001, 0.1]), out)  # the earlier rows already mix 1 and 2: still said
    assert "2 runs in results.jsonl were trained with 1 or 2 CPU threads" in capsys.readouterr().err


def test_no_warning_when_the_counts_agree_or_nothing_is_known():
    task = {"config": {"train": {"device": "cpu", "threads": None}}}
    rows = {"a": {"threads": 1}, "b": {"threads": 1}}
    assert mixed_threads(rows, [task], workers=max(2, local.cores())) is None  # cores // workers = 1
    assert mixed_threads({"a": {"threads": None}}, [task], workers=2) is None  # rows from before threads were kept
    assert mixed_threads(rows, [{"config": {"train": {"device": "cuda", "threads": None}}}], 2) is None  # a GPU run
    warned = mixed_threads({"a": {"threads": 7}}, [{"config": {"train": {"device": "cpu", "threads": 3}}}], 2)
    assert "trained with 7 CPU threads" in warned and "will use 3" in warned


def test_the_planned_count_is_train_threads_else_a_workers_share_else_this_process():
    cpu = {"device": "cpu", "threads": None}
    assert planned_threads({"config": {"train": {**cpu, "threads": 3}}}, workers=2) == 3
    assert planned_threads({"config": {"train": cpu}}, workers=2) == max(1, local.cores() // 2)
    assert planned_threads({"config": {"train": cpu}}, workers=1) == torch.get_num_threads()
    assert planned_threads({"config": {"train": {**cpu, "device": "cuda"}}}, workers=1) is None


def test_a_row_records_threads_for_cpu_runs_only():
    assert cpu_threads({"env": {"cpu_threads": 4, "device": "cpu"}}) == 4
    assert cpu_threads({"env": {"cpu_threads": 4, "device": "cuda:0"}}) is None
    assert cpu_threads({}) is None and cpu_threads({"env": "garbage"}) is None
    assert row_problem({"run_id": "x", "settings": {}, "seed": 0, "status": "completed", "threads": "4"})
