"""Compare tables built from crafted results rows: cells, best mark, Welch marks, diverged/chance, notes."""
import csv
import io

import pytest

from cnnlab.reporting import stats
from cnnlab.reporting.compare import compare, write_compare
from cnnlab.config.schema import ConfigError
from cnnlab.runs import write_json
from cnnlab.reporting.results import append_row


def row(run_id, settings, seed, status="completed", acc=None, loss=None):
    return {"run_id": run_id, "settings": settings, "seed": seed, "status": status,
            "test": {"accuracy": acc, "loss": loss, "f1_macro": acc},
            "best": {"val_accuracy": acc, "epoch": 1.0}, "final_train_loss": loss, "time_s": 1.0,
            "run_dir": f"runs/{run_id}", "error": None}


def write_rows(folder, rows, plan=None):
    folder.mkdir(parents=True, exist_ok=True)
    for r in rows:
        append_row(folder / "results.jsonl", r)
    if plan is not None:
        write_json(folder / "plan.json", plan)
    return folder


GRID = {
    ("lenet", 0.01): [0.990, 0.991, 0.989],  # best
    ("lenet", 0.001): [0.989, 0.991, 0.990],  # indistinguishable from the best
    ("mlp", 0.01): [0.950, 0.951, 0.949],  # clearly worse
    ("mlp", 0.001): [0.960, 0.962, 0.961],
}


def grid_rows():
    out = []
    for (model, lr), accs in GRID.items():
        for seed, acc in enumerate(accs):
            out.append(row(f"{model}-{lr}-{seed}", {"model.name": model, "optim.lr": lr}, seed, acc=acc, loss=1 - acc))
    return out


def test_grid_table_cells_best_and_welch_marks(tmp_path):
    d = write_rows(tmp_path / "sw", grid_rows())
    res = compare(d, by=["model.name", "optim.lr"])
    assert res.row_keys == ["model.name"] and res.col_keys == ["optim.lr"]
    assert res.rows == [("lenet",), ("mlp",)] and res.cols == [("0.001",), ("0.01",)]  # numbers sorted
    best = res.cells[(("lenet",), ("0.01",))]
    assert best.is_best and res.best == (("lenet",), ("0.01",))
    expected = stats.describe(GRID[("lenet", 0.01)])
    assert (best.summary.mean, best.summary.sd, best.summary.ci_low) == (expected.mean, expected.sd, expected.ci_low)
    close = res.cells[(("lenet",), ("0.001",))]
    far = res.cells[(("mlp",), ("0.01",))]
    assert close.same_as_best is True and close.p >= 0.05
    assert far.same_as_best is False and far.p < 0.05

    md = res.markdown()
    lines = md.splitlines()
    lenet_line = next(line for line in lines if line.startswith("| lenet"))
    mlp_line = next(line for line in lines if line.startswith("| mlp"))
    assert "**99.00 ± 0.10 (3) [" in lenet_line and "★" in lenet_line
    assert res.cell_text(close).endswith(" ≈") and res.cell_text(close) in lenet_line
    assert "≈" not in mlp_line and "★" not in mlp_line
    assert "Welch's t-test" in md and "p ≥ 0.05" in md
    assert "untested" not in md

    table = list(csv.DictReader(io.StringIO(res.csv())))
    assert len(table) == 4
    first = table[0]
    assert first["model.name"] == "lenet" and first["optim.lr"] == "0.001" and first["best"] == "0"
    best_row = table[1]
    assert best_row["optim.lr"] == "0.01" and best_row["best"] == "1" and best_row["n"] == "3"
    assert float(best_row["mean"]) == pytest.approx(0.990) and float(first["p_vs_best"]) >= 0.05


def test_lower_is_better_for_losses(tmp_path):
    d = write_rows(tmp_path / "sw", grid_rows())
    res = compare(d, by=["model.name", "optim.lr"], metric="test.loss")
    assert res.best == (("lenet",), ("0.01",)) and not res.percent
    assert "lowest mean" in res.markdown()


def test_diverged_and_chance_cells_are_not_numbers(tmp_path):
    rows = [row(f"ok{s}", {"optim.name": "adam"}, s, acc=0.98 + s / 1000) for s in range(3)]
    rows += [row(f"div{s}", {"optim.name": "sgd"}, s, status="diverged", acc=0.098) for s in range(3)]
    rows += [row(f"chance{s}", {"optim.name": "adamw"}, s, acc=0.1135) for s in range(3)]
    rows += [row("mix0", {"optim.name": "rmsprop"}, 0, acc=0.97), row("mix1", {"optim.name": "rmsprop"}, 1, acc=0.971),
             row("mix2", {"optim.name": "rmsprop"}, 2, status="diverged")]
    d = write_rows(tmp_path / "sw", rows)
    res = compare(d, by=["optim.name"])
    text = {r[0]: res.cell_text(res.cells[(r, ())]) for r in res.rows}
    assert text["sgd"] == "diverged (3/3)"
    assert text["adamw"] == "11.35 ± 0.00 (3) chance"
    assert text["rmsprop"].startswith("97.05 ± ") and text["rmsprop"].endswith("diverged 1/3")
    assert res.best == (("adam",), ())  # chance and diverged cells cannot be the best
    md = res.markdown()
    assert "diverged k/n" in md and "chance:" in md


def test_chance_level_uses_the_class_count_from_a_summary(tmp_path):
    rows = [row(f"a{s}", {"model.name": "a"}, s, acc=0.51 + s / 1000) for s in range(2)]
    rows += [row(f"b{s}", {"model.name": "b"}, s, acc=0.90 + s / 1000) for s in range(2)]
    d = write_rows(tmp_path / "sw", rows)
    assert not compare(d, by=["model.name"]).cells[(("a",), ())].chance  # 10 classes: 0.51 is far above chance
    (d / "runs" / "a0").mkdir(parents=True)
    write_json(d / "runs" / "a0" / "summary.json", {"classes": ["cat", "dog"]})
    assert compare(d, by=["model.name"]).cells[(("a",), ())].chance  # 2 classes: 0.51 is a coin toss


def test_one_seed_has_no_interval_and_says_untested(tmp_path):
    rows = [row("a", {"optim.lr": 0.1}, 0, acc=0.97), row("b", {"optim.lr": 0.01}, 0, acc=0.98)]
    d = write_rows(tmp_path / "sw", rows)
    res = compare(d, by=["optim.lr"])
    assert res.cell_text(res.cells[(("0.01",), ())]) == "**98.00 (1)** ★"
    assert res.cell_text(res.cells[(("0.1",), ())]) == "97.00 (1)"
    assert "untested" in res.markdown() and "Welch" not in res.markdown()


def test_last_row_per_run_wins_and_runs_not_in_the_plan_count_and_are_named(tmp_path):
    rows = [row("r1", {"optim.lr": 0.1}, 0, status="failed"), row("r2", {"optim.lr": 0.1}, 1, acc=0.96),
            row("r1", {"optim.lr": 0.1}, 0, acc=0.95), row("old", {"optim.lr": 0.1}, 2, acc=0.10)]
    plan = {"ofat": False, "keys": ["optim.lr"], "base_settings": {"optim.lr": 0.1},
            "runs": [{"run_id": "r1", "settings": {"optim.lr": 0.1}, "seed": 0, "run_dir": "runs/r1"},
                     {"run_id": "r2", "settings": {"optim.lr": 0.1}, "seed": 1, "run_dir": "runs/r2"}]}
    d = write_rows(tmp_path / "sw", rows, plan)
    res = compare(d, by=["optim.lr"])
    cell = res.cells[(("0.1",), ())]
    assert sorted(cell.values) == [0.1, 0.95, 0.96] and cell.total == 3 and cell.failed == 0
    assert cell.unplanned == 1 and res.cell_text(cell).endswith("; † 1/3")
    assert "old (seed 2)" in res.markdown() and "not in the current sweep file" in res.markdown()
    assert next(csv.DictReader(io.StringIO(res.csv())))["not_in_sweep_file"] == "1"


def test_ofat_cells_keep_other_factors_at_the_base(tmp_path):
    base = {"optim.lr": 0.001, "train.batch_size": 100}
    settings = [base, {"optim.lr": 0.01, "train.batch_size": 100}, {"optim.lr": 0.001, "train.batch_size": 10}]
    rows = [row(f"r{i}", s, 0, acc=0.9 + i / 100) for i, s in enumerate(settings)]
    plan = {"ofat": True, "keys": list(base), "base_settings": base,
            "runs": [{"run_id": r["run_id"], "settings": r["settings"], "seed": 0, "run_dir": r["run_dir"]}
                     for r in rows]}
    d = write_rows(tmp_path / "sw", rows, plan)
    res = compare(d, by=["optim.lr"])
    assert res.rows == [("0.001",), ("0.01",)]
    assert res.cells[(("0.001",), ())].values == [0.9]  # the batch-size-10 run is not pooled in
    assert "base case" in res.markdown()
    grid = write_rows(tmp_path / "grid", rows, {**plan, "ofat": False})
    assert "Cells pool runs that differ in train.batch_size" in compare(grid, by=["optim.lr"]).markdown()


def test_values_follow_the_plan_order_and_null_reads_default(tmp_path):
    rows = [row("b", {"model.variant": "dropout"}, 0, acc=0.9), row("a", {"model.variant": None}, 0, acc=0.9)]
    plan = {"ofat": False, "keys": ["model.variant"], "base_settings": {"model.variant": None},
            "runs": [{"run_id": "a", "settings": {"model.variant": None}, "seed": 0, "run_dir": "runs/a"},
                     {"run_id": "b", "settings": {"model.variant": "dropout"}, "seed": 0, "run_dir": "runs/b"}]}
    d = write_rows(tmp_path / "sw", rows, plan)
    assert compare(d, by=["model.variant"]).rows == [("default",), ("dropout",)]


def test_bad_keys_and_empty_folders_are_config_errors(tmp_path):
    d = write_rows(tmp_path / "sw", grid_rows())
    with pytest.raises(ConfigError, match="optim.momentum is not a setting.*model.name"):
        compare(d, by=["optim.momentum"])
    with pytest.raises(ConfigError, match="--metric"):
        compare(d, by=["model.name"], metric="test.nonsense")
    with pytest.raises(ConfigError, match="no results"):
        compare(tmp_path / "empty", by=["model.name"])


def test_write_compare_writes_md_and_csv(tmp_path):
    d = write_rows(tmp_path / "sw", grid_rows())
    text = write_compare(d, by=["model.name", "optim.lr"], metric="best.val_accuracy")
    assert (d / "compare.md").read_text() == text
    assert "best.val_accuracy (%)" in text
    assert (d / "compare.csv").read_text().splitlines()[0].startswith("model.name,optim.lr,metric,unit,n,mean")
    # Issue 25 (8): compare.md shows % and compare.csv fractions; both say so
    table = list(csv.DictReader(io.StringIO((d / "compare.csv").read_text())))
    assert {r["unit"] for r in table} == {"fraction"} and all(0 <= float(r["mean"]) <= 1 for r in table)
    assert "compare.csv holds the same numbers as fractions of 1" in text
    losses = compare(d, by=["model.name", "optim.lr"], metric="final_train_loss")
    assert "fractions" not in losses.markdown() and {r["unit"] for r in csv.DictReader(io.StringIO(losses.csv()))} == {""}
    # columns can be chosen: optimizer-major rows instead
    res = compare(d, by=["model.name", "optim.lr"], columns=["model.name"])
    assert res.row_keys == ["optim.lr"] and res.cols == [("lenet",), ("mlp",)]


def test_zip_partners_follow_their_factor(tmp_path):
    base = {"loss.name": "cross_entropy", "model.softmax_output": None, "optim.name": "adam", "optim.momentum": 0.0}
    settings = [base, {**base, "loss.name": "mse", "model.softmax_output": True},
                {**base, "optim.name": "sgd"}, {**base, "optim.name": "sgd", "optim.momentum": 0.9}]
    rows = [row(f"r{i}", s, 0, acc=0.9 + i / 100) for i, s in enumerate(settings)]
    plan = {"ofat": True, "keys": list(base), "base_settings": base,
            "factors": [["loss.name", "model.softmax_output"], ["optim.name", "optim.momentum"]],
            "runs": [{"run_id": r["run_id"], "settings": r["settings"], "seed": 0, "run_dir": r["run_dir"]}
                     for r in rows]}
    d = write_rows(tmp_path / "sw", rows, plan)
    by_loss = compare(d, by=["loss.name"])
    assert by_loss.rows == [("cross_entropy",), ("mse",)]  # mse's softmax_output goes with it
    assert "pool" not in by_loss.markdown()
    # by optimizer name alone, "sgd" holds plain SGD and SGD with momentum: the table says so
    by_name = compare(d, by=["optim.name"])
    assert by_name.cells[(("sgd",), ())].total == 2
    assert "differ in optim.momentum" in by_name.markdown()


def test_pruned_runs_are_shown_as_pruned_and_left_out_of_the_numbers(tmp_path):
    from cnnlab.reporting.html import write_sweep_report

    # a pruned run's metrics are those of a run stopped early: counted, its 0.50 would drag the mean down
    rows = [row(f"a{s}", {"optim.lr": 0.01}, s, acc=0.98 + s / 1000) for s in range(2)]
    rows += [row("a2", {"optim.lr": 0.01}, 2, status="pruned", acc=0.50)]
    rows += [row(f"b{s}", {"optim.lr": 1e-5}, s, status="pruned", acc=0.2) for s in range(2)]
    d = write_rows(tmp_path / "sw", rows)
    res = compare(d, by=["optim.lr"])
    text = {r[0]: res.cell_text(res.cells[(r, ())]) for r in res.rows}
    assert text["0.01"].startswith("**98.05 ± ") and text["0.01"].endswith("pruned 1/3")  # mean of the two others
    assert "failed" not in text["0.01"]
    assert text["1e-05"] == "pruned (2/2)"
    assert res.best == (("0.01",), ())
    assert "pruned k/n" in res.markdown()
    table = list(csv.DictReader(io.StringIO(res.csv())))
    assert [(t["optim.lr"], t["n"], t["pruned"], t["failed"]) for t in table] == [("1e-05", "0", "2", "0"),
                                                                                  ("0.01", "2", "1", "0")]
    html = write_sweep_report(d).read_text()
    assert "pruned" in html and "50.00" not in html  # shown by status, its accuracy in no statistic


def ofat_folder(folder, planned_keys, row_keys):
    """An OFAT folder over optim.lr and train.batch_size (base 0.001, 100) whose plan.json is a sweep file of
    ``planned_keys`` and whose rows name ``row_keys``; each run folder's summary.json holds its config."""
    settings = [{"optim.lr": 0.001, "train.batch_size": 100}, {"optim.lr": 0.01, "train.batch_size": 100},
                {"optim.lr": 0.001, "train.batch_size": 10}]
    rows = []
    for i, s in enumerate(settings):
        for seed in (0, 1):
            r = row(f"r{i}s{seed}", {k: v for k, v in s.items() if k in row_keys}, seed, acc=0.8 + i / 10 + seed / 100)
            (folder / r["run_dir"]).mkdir(parents=True)
            write_json(folder / r["run_dir"] / "summary.json", {"status": "completed", "config": {
                "optim": {"lr": s["optim.lr"]}, "train": {"batch_size": s["train.batch_size"]}}})
            rows.append((s, r))
    planned = [(s, r) for s, r in rows if all(s[k] == v for k, v in (("optim.lr", 0.001), ("train.batch_size", 100))
                                               if k not in planned_keys)]
    plan = {"ofat": True, "keys": planned_keys, "factors": [[k] for k in planned_keys], "source": "sub.yaml",
            "base_settings": {k: {"optim.lr": 0.001, "train.batch_size": 100}[k] for k in planned_keys},
            "runs": [{"run_id": r["run_id"], "settings": {k: s[k] for k in planned_keys}, "seed": r["seed"],
                      "run_dir": r["run_dir"]} for s, r in planned]}
    return write_rows(folder, [r for _, r in rows], plan)


def test_rows_of_a_sweep_file_that_varied_fewer_keys_join_their_cells(tmp_path):
    # the full file planned, but the base-case rows were written by a file varying only optim.lr
    d = ofat_folder(tmp_path / "sw", ["optim.lr", "train.batch_size"], ["optim.lr"])
    for table in (compare(d, by=["train.batch_size"]), compare(d, by=["optim.lr"])):
        assert [c.total for c in table.cells.values()] == [2, 2]  # the base case's two runs in each table
        assert "default" not in str(table.rows) and "†" not in table.markdown() and "pool" not in table.markdown()
    assert compare(d, by=["train.batch_size"]).rows == [("10",), ("100",)]


def test_a_subset_sweep_file_run_into_the_folder_loses_no_runs(tmp_path):
    # the full sweep ran first; then a file varying only optim.lr was run into the same folder (its plan.json)
    d = ofat_folder(tmp_path / "sw", ["optim.lr"], ["optim.lr", "train.batch_size"])
    by_lr = compare(d, by=["optim.lr"])
    assert by_lr.rows == [("0.001",), ("0.01",)] and [c.total for c in by_lr.cells.values()] == [2, 2]
    assert "†" not in by_lr.markdown()  # the batch-size-10 runs are not at the base: not in this table
    by_batch = compare(d, by=["train.batch_size"])
    assert by_batch.rows == [("10",), ("100",)]
    small = by_batch.cells[(("10",), ())]
    assert small.total == 2 and small.unplanned == 2 and by_batch.cell_text(small).endswith("; † 2/2")
    assert by_batch.cells[(("100",), ())].unplanned == 0
    md = by_batch.markdown()
    assert "not in the current sweep file (sub.yaml)" in md and "r2s0 (seed 0), r2s1 (seed 1)" in md


def test_intervals_are_cut_at_the_metrics_range_and_the_legend_says_so(tmp_path):
    rows = [row(f"a{s}", {"optim.lr": 0.1}, s, acc=a) for s, a in enumerate([0.95, 0.999])]
    rows += [row(f"b{s}", {"optim.lr": 0.01}, s, acc=a) for s, a in enumerate([0.90, 0.91, 0.92])]
    for r, t in zip(rows, [0.4, 4.0, 10.0, 10.5, 11.0]):
        r["time_s"] = t
    d = write_rows(tmp_path / "sw", rows)
    times = compare(d, by=["optim.lr"], metric="time_s")
    fast = times.cells[(("0.1",), ())]
    assert fast.summary.ci_low == 0.0 and fast.summary.ci_high == stats.describe([0.4, 4.0]).ci_high
    assert times.cell_text(fast).startswith("**2.200 ± 2.546 (2) [0.000, ")
    assert "time_s can take (≥ 0) is cut there" in times.markdown()
    slow = next(r for r in csv.DictReader(io.StringIO(times.csv())) if r["optim.lr"] == "0.01")
    assert float(slow["ci95_low"]) == stats.describe([10.0, 10.5, 11.0]).ci_low  # inside the range: not cut
    acc = compare(d, by=["optim.lr"])
    assert acc.cells[(("0.1",), ())].summary.ci_high == 1.0 and "(0 % … 100 %)" in acc.markdown()
    low = 100 * stats.describe([0.95, 0.999]).ci_low
    assert acc.cell_text(acc.cells[(("0.1",), ())]).startswith(f"**97.45 ± 3.46 (2) [{low:.2f}, 100.00]**")
    assert "cut there" not in compare(d, by=["optim.lr"], metric="test.loss").markdown()


def test_a_cells_numbers_share_their_decimals(tmp_path):
    rows = [row(f"a{s}", {"optim.lr": 0.1}, s, loss=v) for s, v in enumerate([1.561, 1.570, 1.595])]
    rows += [row(f"b{s}", {"optim.lr": 0.01}, s, loss=v) for s, v in enumerate([0.9913, 0.9920])]
    rows += [row("c0", {"optim.lr": 0.001}, 0, loss=123.456)]
    res = compare(write_rows(tmp_path / "sw", rows), by=["optim.lr"], metric="test.loss")
    a = stats.describe([1.561, 1.570, 1.595])  # sd 0.0176: 3 decimals give its 2 digits
    assert res.cell_text(res.cells[(("0.1",), ())]) == f"{a.mean:.3f} ± {a.sd:.3f} (3) [{a.ci_low:.3f}, {a.ci_high:.3f}]"
    b = stats.describe([0.9913, 0.9920])  # sd 0.0005: 5 decimals, more than the mean's 4 significant digits
    assert res.cell_text(res.cells[(("0.01",), ())]).startswith(f"**{b.mean:.5f} ± {b.sd:.5f} (2) [")
    assert res.cell_text(res.cells[(("0.001",), ())]) == "123.5 (1)"


def test_a_row_that_cannot_name_a_setting_reads_default_after_the_numbers(tmp_path):
    rows = [row("a", {"optim.lr": 0.1}, 0, acc=0.9), row("b", {}, 0, acc=0.8), row("c", {"optim.lr": 0.01}, 0, acc=0.7)]
    assert compare(write_rows(tmp_path / "sw", rows), by=["optim.lr"]).rows == [("0.01",), ("0.1",), ("default",)]


def test_a_one_setting_sweep_pools_its_seeds_by_base_or_without_by(tmp_path):
    # a sweep of one study file and N seeds: its rows name no setting at all
    accs = [0.61, 0.64, 0.66]
    rows = [row(f"s{seed}", {}, seed, acc=acc) for seed, acc in enumerate(accs)]
    plan = {"ofat": False, "keys": [], "factors": [], "base_settings": {},
            "runs": [{"run_id": r["run_id"], "settings": {}, "seed": r["seed"], "run_dir": r["run_dir"]} for r in rows]}
    d = write_rows(tmp_path / "sw", rows, plan)
    expected = stats.describe(accs)
    for by in (["base"], None, []):
        res = compare(d, by=by)
        assert res.row_keys == ["base"] and res.rows == [("base",)]  # no run folder to name the study: "base"
        cell = res.cells[(("base",), ())]
        assert cell.summary.n == 3 and cell.summary.mean == pytest.approx(expected.mean)
        assert cell.summary.sd == pytest.approx(expected.sd)
    assert [len(c.values) for c in compare(d, by=["base", "seed"]).cells.values()] == [1, 1, 1]
    with pytest.raises(ConfigError, match="choose from base, seed"):
        compare(d, by=["model.name"])


def test_a_real_sweep_of_one_study_and_three_seeds_is_one_row_named_by_the_study(tmp_path, data_root, capsys):
    import os
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from cnnlab.sweeps.run import run_sweep

    study = {"data": {"name": "mnist", "train_limit": 500, "val_size": 100}, "model": {"name": "linear"},
             "optim": {"name": "adam", "lr": 0.01},
             "train": {"epochs": 1, "batch_size": 100, "progress": False, "threads": 1}}
    (tmp_path / "one_study.yaml").write_text(yaml.safe_dump(study))
    (tmp_path / "seeds.yaml").write_text(yaml.safe_dump({"base": "one_study.yaml", "seeds": 3}))
    out = tmp_path / "out"
    rows = run_sweep(tmp_path / "seeds.yaml", out_dir=out)
    assert [r["status"] for r in rows] == ["completed"] * 3 and {r["seed"] for r in rows} == {0, 1, 2}
    assert f"cnnlab compare {out} --by base" in capsys.readouterr().out  # the sweep's closing hint
    res = compare(out, by=["base"])
    assert res.rows == [("one_study",)]
    cell = res.cells[(("one_study",), ())]
    assert cell.summary.n == 3 and cell.summary.mean == pytest.approx(
        stats.describe([r["test"]["accuracy"] for r in rows]).mean)
    # the command line, without --by: the same one row
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "compare", str(out)], capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    table = [line for line in done.stdout.splitlines() if line.startswith("| one_study |")]
    assert len(table) == 1 and "(3)" in table[0]
    assert len(res.csv().splitlines()) == 2  # a header and the one row


def test_a_value_planned_as_the_models_own_default_is_noted_in_its_table(tmp_path):
    rows = [row("n", {"model.activation": None, "optim.lr": 0.01}, 0, acc=0.9),
            row("t", {"model.activation": "tanh", "optim.lr": 0.01}, 0, acc=0.9),
            row("r", {"model.activation": "relu", "optim.lr": 0.01}, 0, acc=0.8)]
    plan = {"ofat": False, "keys": ["model.activation", "optim.lr"], "base_settings": {},
            "same_as_default": [{"key": "model.activation", "value": "tanh", "model": "lenet5"}],
            "runs": [{"run_id": r["run_id"], "settings": r["settings"], "seed": 0, "run_dir": r["run_dir"]}
                     for r in rows]}
    d = write_rows(tmp_path / "sw", rows, plan)
    assert any("tanh is model lenet5's own default" in n for n in compare(d, by=["model.activation"]).notes)
    assert not any("own default" in n for n in compare(d, by=["optim.lr"]).notes)


def test_a_chance_cell_shows_its_figures_and_is_tested_against_the_best(tmp_path):
    # Study E's SGD cell read "chance (n=3)": no figures, and no ≈ though its spread reached the best.
    rows = [row(f"sgd{s}", {"optim.name": "sgd"}, s, acc=a) for s, a in enumerate((0.1135, 0.1400, 0.1680))]
    rows += [row(f"lbfgs{s}", {"optim.name": "lbfgs"}, s, acc=a) for s, a in enumerate((0.98, 0.981, 0.982))]
    d = write_rows(tmp_path / "sw", rows)
    res = compare(d, by=["optim.name"])
    sgd = res.cells[(("sgd",), ())]
    assert sgd.chance and not sgd.is_best and res.best == (("lbfgs",), ())
    expected = stats.describe([0.1135, 0.1400, 0.1680])
    assert res.cell_text(sgd) == f"{100 * expected.mean:.2f} ± {100 * expected.sd:.2f} (3) chance"
    assert sgd.same_as_best is False and sgd.p < 0.05  # tested like the others: unmarked, as it differs
    assert "p_vs_best" in res.csv() and next(r for r in csv.DictReader(io.StringIO(res.csv()))
                                             if r["optim.name"] == "sgd")["same_as_best"] == "0"
    # the same chance cell beside a best that its Welch test cannot tell apart gets the ≈ mark too
    rows = rows[:3] + [row(f"sgdm{s}", {"optim.name": "sgdm"}, s, acc=a) for s, a in enumerate((0.16, 0.35, 0.55))]
    res = compare(write_rows(tmp_path / "sw2", rows), by=["optim.name"])
    sgd = res.cells[(("sgd",), ())]
    assert res.best == (("sgdm",), ()) and sgd.same_as_best is True
    assert res.cell_text(sgd).endswith("(3) chance ≈")
    assert next(r for r in csv.DictReader(io.StringIO(res.csv())) if r["optim.name"] == "sgd")["same_as_best"] == "1"


def test_notes_count_one_run_or_key_in_the_singular(tmp_path):
    def notes(n_unplanned):
        rows = [row("r1", {"optim.lr": 0.1, "model.name": "a"}, 0, acc=0.9),
                row("r2", {"optim.lr": 0.1, "model.name": "b"}, 1, acc=0.9)]
        rows += [row(f"old{i}", {"optim.lr": 0.1, "model.name": "a"}, 2 + i, acc=0.9) for i in range(n_unplanned)]
        plan = {"ofat": False, "keys": ["optim.lr"], "base_settings": {"optim.lr": 0.1},
                "runs": [{"run_id": r["run_id"], "settings": r["settings"], "seed": r["seed"],
                          "run_dir": r["run_dir"]} for r in rows[:2]]}
        return compare(write_rows(tmp_path / f"sw{n_unplanned}", rows, plan), by=["optim.lr"]).markdown()

    one, two = notes(1), notes(2)
    assert "wrote it, and it counts like the others" in one and "wrote them, and they count" in two
    assert "differ in model.name: add it to --by" in one
    for md in (one, two):
        assert "1 runs" not in md and "1 rows" not in md


def test_a_lone_run_off_the_one_factor_tables_is_counted_in_the_singular(tmp_path):
    base = {"optim.lr": 0.001, "train.batch_size": 100, "model.name": "a"}
    settings = [base, {**base, "optim.lr": 0.01}, {**base, "train.batch_size": 10},
                {**base, "optim.lr": 0.01, "train.batch_size": 10}]
    rows = [row(f"r{i}", s, 0, acc=0.9 + i / 100) for i, s in enumerate(settings)]
    plan = {"ofat": True, "keys": ["optim.lr", "train.batch_size"], "base_settings": base,
            "factors": [["optim.lr"], ["train.batch_size"]],
            "runs": [{"run_id": r["run_id"], "settings": r["settings"], "seed": 0, "run_dir": r["run_dir"]}
                     for r in rows[:3]]}
    md = compare(write_rows(tmp_path / "sw", rows, plan), by=["model.name"]).markdown()
    assert "1 run differs from the base case in more than one factor and is in no one-factor table" in md
    assert "to see it." in md
    rows.append(row("r4", {**base, "optim.lr": 0.1, "train.batch_size": 1}, 0, acc=0.9))
    md = compare(write_rows(tmp_path / "sw2", rows, plan), by=["model.name"]).markdown()
    assert "2 runs differ from the base case in more than one factor and are in no" in md and "to see them." in md


def test_a_cell_with_some_runs_at_chance_names_them(tmp_path):
    # Study B's AdamW lr 0.01 cell: one seed of three collapsed to 11.35 %, the mean (65 %) is not at chance.
    rows = [row(f"aw{s}", {"optim.name": "adamw"}, s, acc=a) for s, a in enumerate((0.1135, 0.9050, 0.9460))]
    rows += [row(f"ad{s}", {"optim.name": "adam"}, s, acc=a) for s, a in enumerate((0.955, 0.957, 0.956))]
    res = compare(write_rows(tmp_path / "sw", rows), by=["optim.name"])
    adamw, adam = res.cells[(("adamw",), ())], res.cells[(("adam",), ())]
    assert not adamw.chance and adamw.collapsed == 1 and adam.collapsed == 0
    assert res.cell_text(adamw).endswith("; at chance 1/3") and "at chance" not in res.cell_text(adam)
    assert any(n.startswith("at chance k/n") for n in res.notes)
    # a cell at chance as a whole says "chance" once, not also "at chance 3/3"
    rows = [row(f"c{s}", {"optim.name": "sgd"}, s, acc=0.1135) for s in range(3)] + rows[3:]
    res = compare(write_rows(tmp_path / "sw2", rows), by=["optim.name"])
    assert res.cell_text(res.cells[(("sgd",), ())]).endswith("(3) chance")
    assert not any(n.startswith("at chance k/n") for n in res.notes)
