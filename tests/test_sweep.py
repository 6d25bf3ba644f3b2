"""Sweeps: plan expansion (grid, zip, OFAT, random), stable ids, validation before any run,
atomic concurrent appends, and real tiny sweeps on MNIST (local, workers, Ray)."""
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
import yaml

from cnnlab.config.schema import ConfigError
from cnnlab.reporting.results import RESULTS, append_row, load_results
from cnnlab.sweeps.run import eta, format_row, run_sweep
from cnnlab.sweeps.plan import load_sweep, plan_sweep
from cnnlab.sweeps.task import run_id

TINY = {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500},
        "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 100, "progress": False}}


def sweep_file(folder: Path, spec: dict, name: str = "sw") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# ----------------------------------------------------------------------------- planning


def test_grid_with_zip_group_and_seed_count():
    s = plan_sweep({"base": TINY, "axes": {"optim.lr": [0.01, 0.001], "model.activation": ["tanh", "relu"]},
                    "zip": [{"optim.name": ["sgd", "sgd"], "optim.momentum": [0.0, 0.9]}], "seeds": 2})
    assert s.keys == ["optim.lr", "model.activation", "optim.name", "optim.momentum"]
    assert len(s.runs) == 2 * 2 * 2 * 2
    combos = {(r.settings["optim.lr"], r.settings["model.activation"], r.settings["optim.momentum"])
              for r in s.runs}
    assert len(combos) == 8
    assert all(r.settings["optim.name"] == "sgd" for r in s.runs)
    assert [r.seed for r in s.runs] == [0] * 8 + [1] * 8  # seeds outermost
    for r in s.runs:  # each run's config carries its settings and seed
        assert r.config.optim.lr == r.settings["optim.lr"] and r.config.optim.momentum == r.settings["optim.momentum"]
        assert r.config.seed == r.seed
    assert len({r.run_id for r in s.runs}) == 16


def test_zip_lists_must_have_equal_lengths():
    with pytest.raises(ConfigError, match="same length"):
        plan_sweep({"base": TINY, "zip": [{"optim.name": ["sgd", "adam"], "optim.lr": [0.1]}]})


def test_ofat_varies_each_factor_alone_and_runs_the_base_once():
    s = plan_sweep({"base": TINY, "ofat": True, "seeds": [3],
                    "axes": {"optim.name": ["adam", "sgd", "rmsprop"], "train.batch_size": [10, 1000]},
                    "zip": [{"loss.name": ["mse"], "model.softmax_output": [True]}]})
    base = {"optim.name": "adam", "train.batch_size": 100, "loss.name": "cross_entropy",
            "model.softmax_output": None}
    assert s.ofat and s.base_settings == base
    # the base case, sgd, rmsprop, two batch sizes, mse: "adam" is the base case itself
    assert len(s.runs) == 6
    assert s.runs[0].settings == base
    for r in s.runs[1:]:
        changed = {k for k in base if r.settings[k] != base[k]}
        assert changed in ({"optim.name"}, {"train.batch_size"}, {"loss.name", "model.softmax_output"})
    assert {r.seed for r in s.runs} == {3}


def test_random_search_is_reproducible_from_its_seed():
    spec = {"base": TINY, "random": {"samples": 5, "seed": 7, "space": {
        "optim.lr": {"loguniform": [1e-4, 1e-1]}, "optim.momentum": {"uniform": [0.5, 0.9]},
        "model.activation": {"choice": ["tanh", "relu"]}}}}
    a, b = plan_sweep(spec), plan_sweep(spec)
    assert [r.settings for r in a.runs] == [r.settings for r in b.runs]
    assert [r.run_id for r in a.runs] == [r.run_id for r in b.runs]
    assert len(a.runs) == 5
    for r in a.runs:
        assert 1e-4 <= r.settings["optim.lr"] <= 1e-1 and 0.5 <= r.settings["optim.momentum"] <= 0.9
        assert r.settings["model.activation"] in ("tanh", "relu")
    other = plan_sweep({**spec, "random": {**spec["random"], "seed": 8}})
    assert [r.settings for r in other.runs] != [r.settings for r in a.runs]
    with pytest.raises(ConfigError, match="0 < lo < hi"):
        plan_sweep({"base": TINY, "random": {"samples": 2, "space": {"optim.lr": {"loguniform": [0, 1]}}}})


SEARCH = {"search": {"name": "optuna", "trials": 2}}


@pytest.mark.parametrize("spec, where", [
    ({"log_uniform": [1e-4, 1e-1]}, "loguniform"), ({"randint": [16, 64]}, "int"),
])
def test_one_range_grammar_and_a_misspelled_range_names_the_right_spelling(spec, where):
    # the random block's space and a search's axes read ranges alike, and refuse the same misspellings alike
    key = "optim.lr" if where == "loguniform" else "train.batch_size"
    for sweep, named in (({"random": {"samples": 2, "space": {key: spec}}}, f"random.space.{key}"),
                         ({**SEARCH, "axes": {key: spec}}, f"axis {key}")):
        with pytest.raises(ConfigError) as e:
            plan_sweep({"base": TINY, **sweep})
        assert named in str(e.value) and f"write {{{where}: " in str(e.value), str(e.value)
    for bad in ({"normal": [0, 1]}, {"uniform": [1, 0]}, {"uniform": [True, 2]}, {"choice": []}):
        messages = []
        for sweep in ({"random": {"samples": 2, "space": {"optim.momentum": bad}}},
                      {**SEARCH, "axes": {"optim.momentum": bad}}):
            with pytest.raises(ConfigError) as e:
                plan_sweep({"base": TINY, **sweep})
            messages.append(str(e.value).split(": ", 2)[-1])  # what follows "<source>: <where>"
        assert messages[0] == messages[1], messages


def test_the_random_block_draws_integers_from_an_int_range():
    s = plan_sweep({"base": TINY, "random": {"samples": 6, "seed": 1, "space": {
        "train.batch_size": {"int": [16, 18]}, "optim.lr": {"loguniform": [1e-3, 1e-1]}}}})
    sizes = [r.settings["train.batch_size"] for r in s.runs]
    assert all(type(b) is int and 16 <= b <= 18 for b in sizes) and len(set(sizes)) > 1


def test_run_ids_are_stable_and_depend_on_config_and_seed(tmp_path):
    path = sweep_file(tmp_path, {"base": TINY, "axes": {"optim.lr": [0.01, 0.001]}, "seeds": 2})
    ids = [r.run_id for r in load_sweep(path).runs]
    assert ids == [r.run_id for r in load_sweep(path).runs]
    assert len(set(ids)) == 4 and all(len(i) == 10 and int(i, 16) >= 0 for i in ids)
    # a default spelled out is the same run as the default left implicit
    implicit = plan_sweep({"base": {k: v for k, v in TINY.items() if k != "loss"}})
    explicit = plan_sweep({"base": {**TINY, "loss": {"name": "cross_entropy"}}})
    assert implicit.runs[0].run_id == explicit.runs[0].run_id
    # ...but any real change to the base is a different run
    changed = plan_sweep({"base": {**TINY, "train": {**TINY["train"], "epochs": 2}}})
    assert changed.runs[0].run_id != implicit.runs[0].run_id
    assert run_id(implicit.runs[0].config.model_copy(update={"seed": 5})) != implicit.runs[0].run_id


def test_base_files_relative_to_the_sweep_and_a_list_of_bases(tmp_path):
    (tmp_path / "studies").mkdir()
    (tmp_path / "studies" / "small.yaml").write_text(yaml.safe_dump(TINY))
    (tmp_path / "studies" / "mlp.yaml").write_text(yaml.safe_dump({**TINY, "model": {"name": "mlp"}}))
    one = load_sweep(sweep_file(tmp_path / "sweeps", {"base": "../studies/small.yaml", "seeds": 2}))
    assert len(one.runs) == 2 and one.runs[0].config.name == "small"
    two = load_sweep(sweep_file(tmp_path / "sweeps", {"base": ["../studies/small.yaml", "../studies/mlp.yaml"],
                                                      "axes": {"optim.lr": [0.1, 0.01]}}))
    assert two.keys == ["base", "optim.lr"]
    assert [(r.settings["base"], r.config.model.name) for r in two.runs[::2]] == [("small", "lenet5"), ("mlp", "mlp")]


@pytest.mark.parametrize("spec, message", [
    ({"base": TINY, "axis": {"optim.lr": [0.1]}}, "unknown sweep key.*axis"),
    ({"axes": {"optim.lr": [0.1]}}, "'base' is missing"),
    ({"base": TINY, "axes": {"optim.lr": [0.01, -1]}}, r"axis optim\.lr value -1 is invalid.*optim\.lr"),
    ({"base": TINY, "axes": {"optim.lrr": [0.01]}}, r"axis optim\.lrr value .*unknown key"),
    ({"base": TINY, "axes": {"model.name": ["lenet5", "no_such_net"]}}, r"model\.name.*no_such_net"),
    ({"base": TINY, "axes": {"optim.lr": 0.1}}, "non-empty list"),
    ({"base": TINY, "axes": {"seed": [1, 2]}}, "seeds"),
    ({"base": TINY, "seeds": 0}, "at least 1"),
    ({"base": TINY, "axes": {"optim.lr": [0.1]}, "zip": [{"optim.lr": [0.2]}]}, "varied twice"),
    # each value is fine alone, the combination is not: the message names the combination
    ({"base": TINY, "axes": {"data.name": ["cifar10"], "data.val_size": [55000]}}, "combination.*val_size"),
])
def test_bad_sweeps_fail_before_anything_runs(tmp_path, spec, message):
    path = sweep_file(tmp_path, spec)
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run_sweep(path, out_dir=out)
    assert not out.exists()


def test_dry_run_plans_without_writing(tmp_path, capsys):
    path = sweep_file(tmp_path, {"base": TINY, "axes": {"optim.lr": [0.01, 0.001]}, "seeds": 2})
    out = tmp_path / "out"
    rows = run_sweep(path, out_dir=out, dry_run=True)
    assert [(r["state"], r["status"]) for r in rows] == [("new", "planned")] * 4
    assert {r["run_dir"] for r in rows} == {f"runs/{r['run_id']}" for r in rows}
    assert not out.exists()
    printed = capsys.readouterr().out
    assert "2 settings × 2 seeds → 4 runs" in printed and all(r["run_id"] in printed for r in rows)


def test_default_out_dir_is_sweeps_slash_the_file_stem(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    path = sweep_file(tmp_path / "recipes", {"base": TINY}, name="my_grid")
    run_sweep(path, dry_run=True)
    assert "in sweeps/my_grid" in capsys.readouterr().out


def test_ray_executor_without_ray_says_how_to_install_it(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)  # what an environment without Ray looks like to import
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"pip install cnnlab\[ray\]"):
        run_sweep(sweep_file(tmp_path, {"base": TINY}), out_dir=out, executor="ray")
    assert not out.exists()
    with pytest.raises(ConfigError, match="ray executor only"):
        run_sweep(sweep_file(tmp_path, {"base": TINY}), out_dir=out, address="auto")


# ----------------------------------------------------------------------------- results.jsonl


def _append_many(path: str, writer: int, count: int) -> None:
    pad = "x" * 3000  # long lines: a torn or interleaved write would show
    for i in range(count):
        append_row(path, {"run_id": f"{writer}-{i}", "settings": {}, "seed": 0, "status": "completed",
                          "writer": writer, "i": i, "pad": pad})


def test_concurrent_appends_keep_every_line_whole(tmp_path):
    path = tmp_path / RESULTS
    ctx = multiprocessing.get_context("fork")  # the children only append: nothing of torch runs in them
    procs = [ctx.Process(target=_append_many, args=(str(path), w, 200)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    lines = path.read_text().splitlines()
    assert len(lines) == 800
    rows = [json.loads(line) for line in lines]  # every line parses: none torn or interleaved
    assert {(r["writer"], r["i"]) for r in rows} == {(w, i) for w in range(4) for i in range(200)}
    assert len(load_results(tmp_path)) == 800


def test_rows_are_plain_json_and_the_last_row_per_run_wins(tmp_path):
    path = tmp_path / RESULTS
    row = {"settings": {}, "seed": 0}  # the fields every row has (results.row_problem)
    append_row(path, {**row, "run_id": "a", "status": "failed", "test": {"loss": float("nan")}})
    append_row(path, {**row, "run_id": "b", "status": "completed"})
    append_row(path, {**row, "run_id": "a", "status": "completed", "test": {"loss": 0.1}})
    assert "NaN" not in path.read_text()
    rows = load_results(tmp_path)
    assert [(r["run_id"], r["status"]) for r in rows] == [("a", "completed"), ("b", "completed")]


# ----------------------------------------------------------------------------- real runs on MNIST

# A linear model on 1,000 MNIST images for one epoch: a run takes seconds, and still learns.
FAST = {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500}, "model": {"name": "linear"},
        "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 1, "batch_size": 100, "progress": False}}
GRID_2X2 = {"base": FAST, "axes": {"optim.name": ["adam", "sgd"], "optim.lr": [0.01, 0.003]}}


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def mtimes(out: Path) -> dict[str, int]:
    return {p.parent.name: p.stat().st_mtime_ns for p in out.glob("runs/*/summary.json")}


def test_local_sweep_runs_skips_and_repairs(tmp_path, data_root, capsys):
    path = sweep_file(tmp_path, GRID_2X2)
    out = tmp_path / "out"
    rows = run_sweep(path, out_dir=out)
    assert [r["status"] for r in rows] == ["completed"] * 4
    assert len(lines(out / RESULTS)) == 4 and (out / "plan.json").exists() and (out / "sweep.yaml").exists()
    progress = [line for line in capsys.readouterr().out.splitlines() if "s elapsed" in line]
    assert len(progress) == 4 and all(line.endswith(" s left)") for line in progress[:3])
    assert progress[3].startswith("[4/4]") and progress[3].endswith(" s elapsed)")
    for r in rows:
        summary = json.loads((out / r["run_dir"] / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["seed"] == r["seed"] == 0
        assert summary["config"]["optim"]["name"] == r["settings"]["optim.name"]
        assert summary["config"]["optim"]["lr"] == r["settings"]["optim.lr"]
        assert r["test"]["accuracy"] == summary["test"]["accuracy"]
        assert r["best"]["val_accuracy"] == summary["best"]["val_accuracy"]
        assert r["final_train_loss"] == summary["final_train_loss"] and r["time_s"] > 0
    adam = next(r for r in rows if r["settings"] == {"optim.name": "adam", "optim.lr": 0.01})
    assert adam["test"]["accuracy"] > 0.6  # it really trained (chance is 0.1)

    # the same sweep again: nothing runs, nothing is appended
    before = mtimes(out)
    capsys.readouterr()
    assert run_sweep(path, out_dir=out) == rows
    assert "4 already done, 0 to run" in capsys.readouterr().out
    assert mtimes(out) == before and len(lines(out / RESULTS)) == 4

    # A failed after its last checkpoint (resumes), B crashed and left only leftovers (runs again
    # from scratch), C finished but its row was lost (row rebuilt from summary.json, no training)
    a, b, c, d = (r["run_id"] for r in rows)
    for run, keep_last in ((a, True), (b, False)):
        summary_path = out / "runs" / run / "summary.json"
        summary_path.write_text(json.dumps({**json.loads(summary_path.read_text()), "status": "failed"}))
        if not keep_last:
            (out / "runs" / run / "last.pt").unlink()
        append_row(out / RESULTS, {**next(r for r in rows if r["run_id"] == run), "status": "failed", "error": "x"})
    kept = [line for line in (out / RESULTS).read_text().splitlines() if json.loads(line)["run_id"] != c]
    (out / RESULTS).write_text("\n".join(kept) + "\n")
    before = mtimes(out)

    again = run_sweep(path, out_dir=out)
    assert [r["status"] for r in again] == ["completed"] * 4
    assert [r["run_id"] for r in again] == [a, b, c, d]
    after = mtimes(out)
    assert after[a] != before[a] and after[b] != before[b]  # trained (resumed / from scratch)
    assert after[c] == before[c] and after[d] == before[d]  # not trained
    written = lines(out / RESULTS)
    assert [r["run_id"] for r in written[-3:]] == [c, a, b]  # recovered first, then the runs in plan order
    assert len(load_results(out)) == 4 and {r["run_id"] for r in load_results(out)} == {a, b, c, d}
    assert "resuming" in (out / "runs" / a / "train.log").read_text()


def test_ofat_progress_names_the_factor_and_a_shorter_sweep_file_shares_the_folder(tmp_path, data_root, capsys):
    from cnnlab.reporting.compare import compare

    base = {**TINY, "name": "tiny", "data": {"name": "mnist", "train_limit": 300, "val_size": 100}}
    short = sweep_file(tmp_path, {"base": base, "ofat": True, "axes": {"optim.lr": [0.003, 0.01]}}, "short")
    full = sweep_file(tmp_path, {"base": base, "ofat": True,
                                 "axes": {"optim.lr": [0.003, 0.01], "train.batch_size": [100, 50]}}, "full")
    out = tmp_path / "out"
    run_sweep(short, out_dir=out)
    printed = capsys.readouterr().out
    assert "(base case) seed=0: completed" in printed and "optim.lr=0.01 seed=0: completed" in printed
    # the full file: the short file's two runs are done, their rows rewritten naming both keys; one new run
    rows = run_sweep(full, out_dir=out)
    printed = capsys.readouterr().out
    assert "3 runs (2 already done, 1 to run)" in printed
    assert "train.batch_size=50 seed=0: completed" in printed and "optim.lr=0.003, train" not in printed
    assert f"cnnlab compare {out} --by optim.lr  (one table per factor: --by optim.lr | train.batch_size)" in printed
    assert all(set(r["settings"]) == {"optim.lr", "train.batch_size"} for r in load_results(out))
    assert [r["status"] for r in rows] == ["completed"] * 3
    # the short file again (its plan.json now): the batch-size run stays in the tables, marked as not its own
    run_sweep(short, out_dir=out)
    assert "2 already done, 0 to run" in capsys.readouterr().out
    by_batch = compare(out, by=["train.batch_size"])
    assert by_batch.rows == [("50",), ("100",)]
    assert by_batch.cells[(("50",), ())].unplanned == 1 and by_batch.cells[(("100",), ())].unplanned == 0
    assert [c.total for c in compare(out, by=["optim.lr"]).cells.values()] == [1, 1]


def test_workers_record_a_divergence_and_a_crash_and_go_on(tmp_path, data_root):
    empty = tmp_path / "no_data"
    empty.mkdir()
    spec = {"base": {**FAST, "data": {**FAST["data"], "download": False}},
            "zip": [{"loss.name": ["cross_entropy", "mse", "cross_entropy"],
                     "optim.name": ["adam", "sgd", "adam"],
                     "optim.lr": [0.01, 100, 0.01],  # SGD at lr 100 on an MSE loss overflows within a few steps
                     "data.root": [str(data_root), str(data_root), str(empty)]}]}  # the last finds no files
    out = tmp_path / "out"
    rows = run_sweep(sweep_file(tmp_path, spec), out_dir=out, workers=2)
    assert [r["status"] for r in rows] == ["completed", "diverged", "failed"]
    assert "DataError" in rows[2]["error"]
    assert len(lines(out / RESULTS)) == 3
    summaries = [json.loads((out / r["run_dir"] / "summary.json").read_text()) for r in rows[:2]]
    assert summaries[1]["status"] == "diverged"
    # each of the 2 workers gets its share of the cores
    assert summaries[0]["env"]["cpu_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


@pytest.mark.slow
def test_ray_executor_runs_the_same_sweep_as_tune_trials(tmp_path, data_root, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setenv("CNNLAB_SCRATCH", str(tmp_path / "scratch"))  # the trials' node-local folders, not /tmp's
    path = sweep_file(tmp_path, GRID_2X2)
    out = tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        t0 = time.perf_counter()
        rows = run_sweep(path, out_dir=out, executor="ray", resources={"cpu": 1})
        print(f"ray sweep of 4 runs: {time.perf_counter() - t0:.1f} s")
        assert [r["status"] for r in rows] == ["completed"] * 4
        written = lines(out / RESULTS)  # the driver wrote one row per trial
        assert sorted(r["run_id"] for r in written) == sorted(r.run_id for r in load_sweep(path).runs)
        for r in rows:
            assert json.loads((out / r["run_dir"] / "summary.json").read_text())["status"] == "completed"
        # the same rows as the local executor would write: re-running locally finds everything done
        assert run_sweep(path, out_dir=out) == rows and len(lines(out / RESULTS)) == 4
        assert run_sweep(path, out_dir=out, executor="ray") == rows
    finally:
        ray.shutdown()


RECIPES = sorted((Path(__file__).resolve().parents[1] / "recipes" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_are_valid_sweeps(path):
    s = load_sweep(path)
    assert s.runs and len({r.run_id for r in s.runs}) == len(s.runs)


def test_study_recipes_have_the_studies_shapes():
    folder = RECIPES[0].parent
    b = load_sweep(folder / "study_b_mnist_grid.yaml")
    assert len(b.runs) == 5 * 4 * 2 * 3
    assert {(r.config.train.batch_size, r.config.train.epochs) for r in b.runs} == {(64, 10)}
    optimizers = {(r.config.optim.name, r.config.optim.momentum) for r in b.runs}
    assert optimizers == {("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0), ("adamw", 0.0)}
    e = load_sweep(folder / "study_e_ofat.yaml")
    lrs = sorted({r.config.optim.lr for r in e.runs})
    assert lrs == [0.0001, 0.0002, 0.0004, 0.0008, 0.001, 0.0016, 0.0032, 0.0064, 0.0128]
    assert sorted({r.config.train.batch_size for r in e.runs}) == [10, 20, 40, 80, 100, 160, 320, 640, 1280]
    assert all(r.config.model.softmax_output for r in e.runs if r.config.loss.name == "mse")
    assert len(e.runs) == 33 * 3
    c = load_sweep(folder / "study_c_three_way.yaml")
    assert sorted({r.settings["base"] for r in c.runs}) == ["study_c_lenet5", "study_c_lenet5_regularised",
                                                            "study_c_mlp"]
    assert len(c.runs) == 15


SHORTENED = {"train": ("epochs", "threads"), "data": ("train_limit",)}  # what a *_cpu.yaml sweep may change
# Named exceptions, each labelled on its study page: Study A's CIFAR cuts also hold out 1,000 validation
# images instead of 5,000 (one epoch gives one evaluation point; the test set stays whole).
# Study B's MNIST cuts hold out 2,000 validation images instead of 10,000 (it only picks best.pt).
ALSO_SHORTENED = {"study_a_cifar_resnet_depth_cpu": {"data": ("val_size",)},
                  "study_a_cifar_alexnet_cpu": {"data": ("val_size",)},
                  "study_b_mnist_grid_cpu": {"data": ("val_size",)},
                  "study_b_mnist_dropout_cpu": {"data": ("val_size",)},
                  "study_b_mnist_variants_cpu": {"data": ("val_size",)},
                  "study_a_mnist_alexnet_cpu": {"data": ("val_size",)},
                  # Study D's raw-pixel softmax first ran at lr 0.05 (its other models' rate); the report's is 0.1
                  "study_d_softmax_raw_cpu": {"optim": ("lr",)},
                  "study_a_mnist_alexnet_adadelta_cpu": {"data": ("val_size",)},
                  "study_a_cifar_resnet110_cpu": {"data": ("val_size",)}}
# A cut that takes some settings of a differently named full sweep.
FULL_SWEEP = {"study_b_cifar_multistep_cpu": "study_b_cifar", "study_b_mnist_dropout_cpu": "study_b_mnist_grid",
              "study_b_mnist_variants_cpu": "study_b_mnist_grid",
              "study_a_mnist_alexnet_cpu": "study_a_mnist", "study_d_softmax_raw_lr01_cpu": "study_d_softmax_raw",
              "study_a_mnist_alexnet_adadelta_cpu": "study_a_mnist", "study_a_cifar_resnet110_cpu": "study_a_cifar_resnet_depth"}


@pytest.mark.parametrize("path", [p for p in RECIPES if p.stem.endswith("_cpu")], ids=lambda p: p.stem)
def test_shortened_sweeps_run_their_full_sweeps_settings(path):
    # docs/studies/ re-ran these on a shared CPU; their inline study files must not drift from the originals.
    extra = ALSO_SHORTENED.get(path.stem, {})

    def normal(cfg):
        d = cfg.to_dict()
        d.pop("name", None)  # a label, not a setting
        for section in {**SHORTENED, **extra}:
            for k in SHORTENED.get(section, ()) + extra.get(section, ()):
                d[section].pop(k)
        return json.dumps(d, sort_keys=True)

    full_name = FULL_SWEEP.get(path.stem, path.stem.removesuffix("_cpu"))
    full = {normal(r.config) for r in load_sweep(path.with_name(full_name + ".yaml")).runs}
    short = load_sweep(path).runs
    assert short and all(normal(r.config) in full for r in short)


def test_a_swept_value_equal_to_the_models_own_default_is_warned_at_plan_time(tmp_path, capsys):
    # lenet5 builds tanh and avg pooling when model.activation / model.pooling are left null
    spec = {"base": TINY, "ofat": True, "axes": {"model.activation": ["tanh", "relu"], "model.pooling": ["max"],
                                                 "model.widths": [[6, 16, 120], [8, 16, 120]]}}
    s = plan_sweep(spec)
    assert s.same_as_default == [{"key": "model.activation", "value": "tanh", "model": "lenet5"},
                                 {"key": "model.widths", "value": [6, 16, 120], "model": "lenet5"}]
    ids = {json.dumps(r.settings["model.activation"]): r.run_id for r in s.runs if r.settings["model.widths"] is None
           and r.settings["model.pooling"] is None}
    assert len(set(ids.values())) == 3  # the duplicate keeps its own run id (null, tanh, relu)
    assert plan_sweep({**spec, "axes": {"model.activation": ["relu"]}}).same_as_default == []
    # a grid whose null and default never meet in otherwise equal settings: nothing to say
    grid = plan_sweep({"base": {**TINY, "model": {"name": "lenet5", "activation": "relu"}},
                       "axes": {"model.activation": ["tanh"]}})
    assert grid.same_as_default == []
    run_sweep(sweep_file(tmp_path, spec), out_dir=tmp_path / "out", dry_run=True)
    err = capsys.readouterr().err
    assert 'model.activation="tanh" is model lenet5\'s own default' in err and "model.pooling" not in err


def test_a_progress_line_says_when_a_run_ended_at_chance():
    collapsed = {"run_id": "aw0", "settings": {"optim.name": "adamw"}, "seed": 0, "status": "completed",
                 "test": {"accuracy": 0.1135}, "time_s": 3.0}
    learned = {**collapsed, "test": {"accuracy": 0.9460}}
    assert "chance level" in format_row(collapsed, classes=10)
    assert "chance level" not in format_row(learned, classes=10)
    assert "chance level" not in format_row(collapsed)  # no class count known: no claim
    assert "chance level" in format_row({**collapsed, "test": {"accuracy": 0.52}}, classes=2)


def test_a_pruned_run_is_not_said_to_have_failed_to_learn():
    # Issue 25 (8): an ASHA-pruned run printed "test accuracy 0.2583 (chance level: the network did not learn)".
    pruned = {"run_id": "p0", "settings": {"optim.lr": 0.1}, "seed": 0, "status": "pruned",
              "test": {"accuracy": 0.1050}, "best": {"val_accuracy": 0.11, "epoch": 1.0}, "time_s": 2.0}
    line = format_row(pruned, classes=10)
    assert "chance level" not in line and "did not learn" not in line
    assert "stopped by the sweep's scheduler at epoch 1" in line and "partial score" in line


def left_s(text: str) -> float:
    """The seconds an eta text says are left (`` (… elapsed, about 1 min 5 s left)``)."""
    words = text.split("about ")[1].removesuffix(" left)").split()
    return float(words[0]) * 60 + float(words[2]) if "min" in words else float(words[0])


def test_eta_expects_each_run_to_cost_what_finished_runs_of_its_base_cost():
    # Study C/E: an MLP base (1 s a run) beside a LeNet base (10 s a run), one worker
    done = [("mlp", "mlp", 1.0), ("lenet", "lenet5", 10.0)]
    assert left_s(eta(done, [("mlp", "mlp")] * 4, 11.0)) == 4  # equal costs would say 22 s
    assert left_s(eta(done, [("lenet", "lenet5")] * 4, 11.0)) == 40
    assert eta(done, [("lenet", "lenet5")] * 9, 11.0) == " (11.0 s elapsed, about 1 min 30 s left)"
    # the same base and model first: one base swept over two models
    mixed = [("b", "mlp", 1.0), ("b", "lenet5", 10.0)]
    assert left_s(eta(mixed, [("b", "lenet5")], 11.0)) == 10 and left_s(eta(mixed, [("b", "mlp")], 11.0)) == 1
    # fall-backs: the base (a model not finished yet), the model (a base not finished yet), then all runs' mean
    assert left_s(eta(mixed, [("b", "resnet18")], 22.0)) == 11  # 5.5 s a run, at half the pace
    assert left_s(eta(done + [("other", "mlp", 3.0)], [("new", "mlp")], 14.0)) == 2
    assert left_s(eta(done, [(None, None)] * 2, 11.0)) == 11  # a search's trials: not known yet


def test_eta_scales_by_the_elapsed_time_over_the_runs_own_time():
    done = [("a", "mlp", 4.0), ("a", "mlp", 4.0), ("b", "lenet5", 12.0), ("b", "lenet5", 12.0)]
    assert left_s(eta(done, [("b", "lenet5")] * 2, 16.0)) == 12  # two workers: 32 s of runs in 16 s
    assert left_s(eta(done, [("b", "lenet5")] * 2, 40.0)) == 30  # 8 s of overhead between the runs
    # no run says how long it took (rows without time_s): every run alike, at the pace so far
    assert left_s(eta([("a", "mlp", None), ("b", "lenet5", None)], [("a", "mlp")] * 3, 10.0)) == 15
    assert eta(done, [], 16.0) == " (16.0 s elapsed)" and eta([], [("a", "mlp")], 1.0) == " (1.0 s elapsed)"
