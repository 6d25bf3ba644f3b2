"""The Ray Tune executor: sweep-file blocks (resources, scheduler, search) checked before anything runs,
clear connection errors, and real Ray: a local instance with ASHA pruning and an Optuna search, and a
two-node cluster started with `ray start` whose nodes train in their own scratch folders."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from cnnlab.config.schema import ConfigError
from cnnlab.reporting.results import load_results
from cnnlab.sweeps.plan import plan_sweep
from cnnlab.sweeps.run import run_sweep
from cnnlab.sweeps.tune import RayJob, run_resources

REPO = Path(__file__).resolve().parents[1]
FAST = {"data": {"name": "mnist", "train_limit": 1000, "val_size": 500}, "model": {"name": "linear"},
        "optim": {"name": "adam", "lr": 0.01}, "train": {"epochs": 1, "batch_size": 100, "progress": False}}


def sweep_file(folder: Path, spec: dict, name: str = "sw") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- checked before anything runs


@pytest.mark.parametrize("extra, message", [
    ({"resources": {"cpu": 0}}, r"resources\.cpu must be above 0"),
    ({"resources": {"gpu": 1.5}}, r"resources\.gpu above 1 must be a whole number"),
    ({"resources": {"cpus": 2}}, r"resources must be \{cpu: N, gpu: G\}"),
    ({"scheduler": {"name": "hyperband"}}, r"scheduler must be .*asha.*median"),
    ({"scheduler": {"name": "asha", "metric": "val_acc"}}, r"scheduler\.metric must be one of val\.accuracy"),
    ({"scheduler": {"name": "asha", "grace_epochs": 0}}, r"grace_epochs must be a number of epochs > 0"),
    ({"scheduler": {"name": "asha", "reduction_factor": 1}}, r"reduction_factor must be an integer ≥ 2"),
    ({"search": {"name": "optuna", "trials": 0}, "axes": {"optim.lr": [0.1]}}, r"search\.trials must be a positive"),
    ({"search": {"name": "hyperopt", "trials": 2}}, r"search must be \{name: optuna"),
    ({"axes": {"optim.lr": {"loguniform": [1e-4, 1e-1]}}}, r"axis optim\.lr is a range .*add search:"),
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"optim.lr": {"loguniform": [0, 1]}}}, "0 < lo < hi"),
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"train.batch_size": {"int": [10, 20.5]}}},
     r"int needs \[lo, hi\] with integers"),
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"optim.lr": {"normal": [0, 1]}}}, r"loguniform.*uniform.*int"),
    # each end of a range is built against the study: a negative learning rate is refused now, not at trial 7
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"optim.lr": {"uniform": [-1, 1]}}},
     r"axis optim\.lr value -1 is invalid"),
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"optim.lr": [0.1]}, "seeds": 3}, "one seed"),
    ({"search": {"name": "optuna", "trials": 2}, "axes": {"optim.lr": [0.1]},
      "zip": [{"optim.name": ["sgd"], "optim.momentum": [0.9]}]}, "zip cannot be combined with search"),
])
def test_bad_ray_blocks_fail_before_anything_runs(tmp_path, extra, message):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=message):
        run_sweep(sweep_file(tmp_path, {"base": FAST, **extra}), out_dir=out, executor="ray")
    assert not out.exists()


def test_a_search_and_resources_need_the_ray_executor(tmp_path):
    out = tmp_path / "out"
    search = {"base": FAST, "axes": {"optim.lr": {"loguniform": [0.001, 0.1]}}, "search": {"name": "optuna", "trials": 2}}
    with pytest.raises(ConfigError, match="search: is Ray Tune's; run the sweep with --executor ray"):
        run_sweep(sweep_file(tmp_path, search), out_dir=out)
    with pytest.raises(ConfigError, match="apply to the ray executor only"):
        run_sweep(sweep_file(tmp_path, {"base": FAST}), out_dir=out, resources={"cpu": 2})
    with pytest.raises(ConfigError, match=r"--cpus-per-run / --gpus-per-run: resources\.cpu must be above 0"):
        run_sweep(sweep_file(tmp_path, {"base": FAST}), out_dir=out, executor="ray", resources={"cpu": 0})
    assert not out.exists()
    # the command line: exit 2 and one paragraph, nothing written
    cmd = [sys.executable, "-m", "cnnlab.cli", "sweep", str(sweep_file(tmp_path, {"base": FAST})), "--out", str(out),
           "--gpus-per-run", "0.5"]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 2 and "add --executor ray" in done.stderr and not out.exists()


def test_a_sweep_file_with_a_scheduler_runs_locally_without_pruning_and_says_so_once(tmp_path, data_root, capsys):
    # Issue 25 (10): "scheduler: is Ray Tune's" refused the local executor, so one file could not serve both.
    spec = {"base": FAST, "axes": {"optim.lr": [0.01, 0.003]},
            "scheduler": {"name": "asha", "metric": "val.accuracy", "grace_epochs": 0.5, "reduction_factor": 2}}
    rows = run_sweep(sweep_file(tmp_path, spec), out_dir=tmp_path / "out")
    assert [r["status"] for r in rows] == ["completed", "completed"]
    err = capsys.readouterr().err
    assert err.count("scheduler: asha is Ray Tune's; the local executor runs every run to its end without pruning") \
        == 1, err
    assert all(r["best"]["epoch"] == 1.0 for r in load_results(tmp_path / "out"))  # every run to its last epoch


def test_a_search_plans_its_space_not_its_runs(tmp_path, capsys):
    s = plan_sweep({"base": FAST, "search": {"name": "optuna", "trials": 4, "metric": "val.loss"}, "seeds": [5],
                    "axes": {"optim.lr": {"loguniform": [1e-4, 1e-1]}, "train.batch_size": {"int": [50, 200]},
                             "optim.name": ["adam", "sgd"]}})
    assert s.runs == [] and s.seed == 5 and s.keys == ["optim.lr", "train.batch_size", "optim.name"]
    assert s.search == {"name": "optuna", "trials": 4, "metric": "val.loss", "seed": None}
    path = sweep_file(tmp_path, {"base": FAST, "search": {"name": "optuna", "trials": 4},
                                 "axes": {"optim.lr": {"loguniform": [1e-4, 1e-1]}}})
    assert run_sweep(path, out_dir=tmp_path / "out", executor="ray", dry_run=True) == []
    assert "optuna search of 4 trials on val.accuracy" in capsys.readouterr().out


def test_the_optuna_searcher_is_reproducible_from_the_sweep_seed(tmp_path):
    from cnnlab.sweeps.tune import _param_space, _searcher

    space = {"optim.lr": {"loguniform": [1e-4, 1e-1]}, "train.batch_size": {"int": [50, 200]},
             "optim.name": ["adam", "sgd"]}

    def samples(seed: int) -> list[dict]:
        job = RayJob(out=tmp_path, tasks=[], search={"name": "optuna", "trials": 5, "metric": "val.accuracy",
                                                     "seed": seed}, space=space, base=FAST, seed=0)
        searcher = _searcher(job)
        searcher.set_search_properties(None, None, _param_space(job))
        return [searcher.suggest(f"t{i}") for i in range(5)]

    a, b, c = samples(1), samples(1), samples(2)
    assert a == b and a != c
    for config in a:
        assert 1e-4 <= config["optim.lr"] <= 1e-1 and config["optim.name"] in ("adam", "sgd")
        assert isinstance(config["train.batch_size"], int) and 50 <= config["train.batch_size"] <= 200


def test_resources_default_to_a_gpu_only_where_there_is_one_and_must_fit_a_node():
    cpu_only, gpus = [{"CPU": 8.0}], [{"CPU": 8.0, "GPU": 2.0}]
    assert run_resources({}, ("auto",), {"CPU": 8.0}, cpu_only) == {"cpu": 1.0, "gpu": 0.0}
    assert run_resources({}, ("auto",), {"CPU": 8.0, "GPU": 2.0}, gpus) == {"cpu": 1.0, "gpu": 1.0}
    assert run_resources({}, ("cpu",), {"CPU": 8.0, "GPU": 2.0}, gpus) == {"cpu": 1.0, "gpu": 0.0}
    assert run_resources({"cpu": 2.0, "gpu": 0.5}, ("cuda",), {"CPU": 8.0, "GPU": 2.0}, gpus) == {"cpu": 2.0,
                                                                                                 "gpu": 0.5}
    with pytest.raises(ConfigError, match="no node of the cluster has that much"):
        run_resources({"gpu": 1.0}, ("auto",), {"CPU": 8.0}, cpu_only)
    with pytest.raises(ConfigError, match="no node of the cluster has that much"):
        run_resources({"cpu": 16.0}, ("auto",), {"CPU": 16.0}, cpu_only + cpu_only)


def test_an_address_nobody_answers_is_reported_in_seconds(tmp_path):
    out = tmp_path / "out"
    port = free_port()  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"no Ray cluster answers at 127\.0\.0\.1:{port}.*ray start --head"):
        run_sweep(sweep_file(tmp_path, {"base": FAST}), out_dir=out, executor="ray", address=f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 20 and not out.exists()
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        run_sweep(sweep_file(tmp_path, {"base": FAST}), out_dir=out, executor="ray", address="headnode")


# ----------------------------------------------------------------------------- a real local Ray instance


@pytest.fixture(scope="module")
def local_ray(tmp_path_factory):
    ray = pytest.importorskip("ray")
    scratch = tmp_path_factory.mktemp("scratch")
    old = os.environ.get("CNNLAB_SCRATCH")
    os.environ["CNNLAB_SCRATCH"] = str(scratch)  # the workers started by ray.init inherit it
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield scratch
    ray.shutdown()
    if old is None:
        os.environ.pop("CNNLAB_SCRATCH", None)
    else:
        os.environ["CNNLAB_SCRATCH"] = old


def tune_trials(scratch: Path) -> list[tuple[dict, list[dict]]]:
    """Each Tune trial of the latest experiment: its config (params.json) and its reported results."""
    experiment = max((scratch / "tune").glob("sweep-*"), key=lambda p: p.stat().st_mtime)
    return [(json.loads((d / "params.json").read_text()),
             [json.loads(line) for line in (d / "result.json").read_text().splitlines() if line.strip()])
            for d in sorted(experiment.iterdir()) if (d / "params.json").exists()]


@pytest.mark.slow
def test_resources_no_node_has_are_refused_before_anything_is_written(tmp_path, local_ray):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match="asks Ray for 4 CPU and 0 GPU, but no node of the cluster has that much"):
        run_sweep(sweep_file(tmp_path, {"base": FAST}), out_dir=out, executor="ray", resources={"cpu": 4})
    assert not (out / "plan.json").exists() and not (out / "results.jsonl").exists()


@pytest.mark.slow
def test_asha_prunes_a_hopeless_run_which_keeps_its_curve_and_best_weights(tmp_path, data_root, local_ray):
    spec = {"base": {**FAST, "train": {**FAST["train"], "epochs": 2}},
            "zip": [{"optim.name": ["adam", "adam", "sgd"], "optim.lr": [0.01, 0.003, 1e-6]}],
            "resources": {"cpu": 1},
            "scheduler": {"name": "asha", "metric": "val.accuracy", "grace_epochs": 1, "reduction_factor": 2}}
    out = tmp_path / "out"
    rows = run_sweep(sweep_file(tmp_path, spec), out_dir=out, executor="ray")
    by_lr = {r["settings"]["optim.lr"]: r for r in rows}
    # the third run reaches epoch 1 after both others (2 CPUs, 1 per run): it is below their median
    assert by_lr[1e-6]["status"] == "pruned"
    assert "completed" in {by_lr[0.01]["status"], by_lr[0.003]["status"]}
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(r["run_id"] for r in lines) == sorted(r["run_id"] for r in rows)  # one row per run
    pruned = out / by_lr[1e-6]["run_dir"]
    assert json.loads((pruned / "summary.json").read_text())["status"] == "pruned"
    assert [m["epoch"] for m in map(json.loads, (pruned / "metrics.jsonl").read_text().splitlines())] == [1.0]
    assert (pruned / "best.pt").exists() and by_lr[1e-6]["test"]["accuracy"] is not None  # best weights scored
    for r in rows:
        if r["status"] == "completed":
            assert len((out / r["run_dir"] / "metrics.jsonl").read_text().splitlines()) == 2
        summary = json.loads((out / r["run_dir"] / "summary.json").read_text())
        assert summary["env"]["cpu_threads"] == 1  # torch threads follow the run's 1 CPU
    # Tune saw each run's settings as its config, and each evaluation point as a result
    trials = tune_trials(local_ray)
    assert sorted((c["optim.name"], c["optim.lr"], c["seed"]) for c, _ in trials) == [
        ("adam", 0.003, 0), ("adam", 0.01, 0), ("sgd", 1e-6, 0)]
    for config, results in trials:
        evals = [r for r in results if r.get("val.accuracy") is not None]
        assert [r["epoch"] for r in evals] == ([1.0] if config["optim.lr"] == 1e-6 else [1.0, 2.0])[:len(evals)]
        assert all({"val.loss", "train.loss", "epoch"} <= set(r) for r in evals)
    # the same sweep again: every run is final (pruned included), nothing runs
    assert [r["status"] for r in run_sweep(sweep_file(tmp_path, spec), out_dir=out, executor="ray")] == \
        [r["status"] for r in rows]
    assert len((out / "results.jsonl").read_text().splitlines()) == 3


@pytest.mark.slow
def test_optuna_search_samples_rows_like_any_other(tmp_path, data_root, local_ray):
    spec = {"base": FAST, "search": {"name": "optuna", "trials": 3, "metric": "val.accuracy", "seed": 3},
            "axes": {"optim.lr": {"loguniform": [1e-3, 1e-1]}, "train.batch_size": {"int": [50, 200]}}}
    out = tmp_path / "out"
    rows = run_sweep(sweep_file(tmp_path, spec), out_dir=out, executor="ray", resources={"cpu": 1})
    assert [r["status"] for r in rows] == ["completed"] * 3 and len({r["run_id"] for r in rows}) == 3
    for r in rows:
        assert 1e-3 <= r["settings"]["optim.lr"] <= 1e-1 and 50 <= r["settings"]["train.batch_size"] <= 200
        summary = json.loads((out / r["run_dir"] / "summary.json").read_text())
        assert summary["config"]["optim"]["lr"] == r["settings"]["optim.lr"]
        assert summary["config"]["train"]["batch_size"] == r["settings"]["train.batch_size"]
    plan = json.loads((out / "plan.json").read_text())
    assert sorted(r["run_id"] for r in plan["runs"]) == sorted(r["run_id"] for r in rows)
    from cnnlab.reporting.compare import compare

    assert compare(out, by=["optim.lr"]).cells  # the sampled runs compare like a grid's
    # the trials are done: a re-run samples nothing more
    assert run_sweep(sweep_file(tmp_path, spec), out_dir=out, executor="ray") == rows
    assert len(load_results(out)) == 3


# ----------------------------------------------------------------------------- a real two-node cluster


def _descendants_and(marks: list[str]) -> set[int]:
    """Pids whose command line holds one of ``marks`` (this test's Ray temp folder and port), and their children."""
    procs = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        procs[int(pid)] = (ppid, cmd)
    hit = {p for p, (_, cmd) in procs.items() if any(m in cmd for m in marks) and p != os.getpid()}
    grew = True
    while grew:
        new = {p for p, (pp, _) in procs.items() if pp in hit and p not in hit}
        hit |= new
        grew = bool(new)
    return hit


@pytest.mark.slow
def test_two_node_cluster_without_a_shared_folder(tmp_path, data_root):
    pytest.importorskip("ray")
    ray_bin = str(Path(sys.executable).parent / "ray")
    root = Path(tempfile.mkdtemp(prefix="cnl", dir="/tmp"))  # short: Ray's socket paths have a length limit
    port = free_port()
    marks = [str(root), f":{port}"]
    token = uuid.uuid4().hex
    base_env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                "CNNLAB_DATA": str(data_root)}
    base_env.pop("RAY_ADDRESS", None)
    scratch = {name: root / name for name in ("head", "node2", "driver")}
    try:
        subprocess.run([ray_bin, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=1",
                        f"--temp-dir={root / 'ray'}", "--include-dashboard=false", "--disable-usage-stats"],
                       env={**base_env, "CNNLAB_SCRATCH": str(scratch["head"])}, check=True, capture_output=True)
        subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                        "--num-cpus=1", "--disable-usage-stats"],
                       env={**base_env, "CNNLAB_SCRATCH": str(scratch["node2"])}, check=True, capture_output=True)
        spec = {"base": FAST, "axes": {"optim.lr": [0.01, 0.003, 0.001, 0.0003]}}
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "cnnlab.cli", "sweep", str(sweep_file(tmp_path, spec)), "--out", str(out),
               "--executor", "ray", "--address", f"127.0.0.1:{port}"]
        env = {**base_env, "CNNLAB_SCRATCH": str(scratch["driver"])}
        # a wrong token: one paragraph naming the fix, exit 2, nothing of the sweep written
        refused = subprocess.run(cmd, env={**env, "RAY_AUTH_TOKEN": "not-the-token"}, capture_output=True, text=True,
                                 timeout=300)
        assert refused.returncode == 2 and "RAY_AUTH_TOKEN" in refused.stderr, refused.stdout + refused.stderr
        assert not (out / "plan.json").exists()
        # the driver dies after the first row; the second driver resumes: finished rows are not re-run
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.time() + 400
        while time.time() < deadline and first.poll() is None and not (
                (out / "results.jsonl").exists() and (out / "results.jsonl").read_text().strip()):
            time.sleep(0.5)
        first.send_signal(signal.SIGKILL)
        first.wait()
        finished = {r["run_id"]: (out / r["run_dir"] / "summary.json").stat().st_mtime_ns for r in load_results(out)}
        assert finished, first.stdout.read()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "already done" in done.stdout
        rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
        ids = [r["run_id"] for r in rows]
        assert len(ids) == len(set(ids)) == 4  # exactly one row per run, none written twice
        assert all(r["status"] == "completed" for r in rows)
        for rid in ids:
            run = out / "runs" / rid
            for name in ("summary.json", "metrics.jsonl", "best.pt", "curves.png", "config.yaml"):
                assert (run / name).is_file(), (rid, name)
            # no trial ran in the driver's folder: a run holds its lock file where it trains, and none is here
            assert not (run / ".cnnlab.lock").exists()
        for rid, mtime in finished.items():  # the first driver's runs: not trained again
            assert (out / "runs" / rid / "summary.json").stat().st_mtime_ns == mtime
        trained = {n: {p.parent.name for p in scratch[n].glob("**/runs/*/summary.json")} for n in ("head", "node2")}
        assert trained["head"] and trained["node2"]  # both nodes trained, each in its own scratch folder
        assert trained["head"] | trained["node2"] == set(ids) and not list(scratch["driver"].glob("**/runs"))
        for node in ("head", "node2"):
            for summary in scratch[node].glob("**/runs/*/summary.json"):
                assert (summary.parent / "best.pt").read_bytes() == (out / "runs" / summary.parent.name /
                                                                     "best.pt").read_bytes()
    finally:
        for pid in _descendants_and(marks):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
def test_a_relative_data_root_is_the_study_files_on_every_trial(tmp_path, data_root, local_ray, monkeypatch, capfd):
    """Issue 25, item 3: trials run in Ray's own working directory; a relative data.root is resolved from the
    study file that names it before any trial starts. A folder that is not there fails each trial naming the
    absolute folder, and ASHA is never handed a trial without results."""
    from conftest import write_image_folder

    project = tmp_path / "project"
    write_image_folder(project / "photos", ["cat", "dog"], per_class=4, size=(10, 12))
    study = {"data": {"name": "imagefolder", "root": "../photos", "resize": 8, "val_size": 0.25, "test_size": 0.25},
             "model": {"name": "linear"}, "train": {"epochs": 1, "batch_size": 4, "progress": False}}
    (project / "studies").mkdir()
    (project / "studies" / "photos.yaml").write_text(yaml.safe_dump(study))
    (project / "studies" / "typo.yaml").write_text(yaml.safe_dump({**study, "data": {**study["data"],
                                                                                    "root": "../fotos"}}))
    spec = {"axes": {"optim.lr": [0.01, 0.001]}, "resources": {"cpu": 1},
            "scheduler": {"name": "asha", "metric": "val.accuracy", "grace_epochs": 1, "reduction_factor": 2}}
    monkeypatch.chdir(tmp_path)  # neither the sweep's folder nor the study's
    rows = run_sweep(sweep_file(project / "sweeps", {"base": "../studies/photos.yaml", **spec}), out_dir="out",
                     executor="ray")
    assert [r["status"] for r in rows] == ["completed", "completed"], rows
    rows = run_sweep(sweep_file(project / "sweeps", {"base": "../studies/typo.yaml", **spec}, name="typo"),
                     out_dir="typo", executor="ray")
    assert [r["status"] for r in rows] == ["failed", "failed"]
    assert all(f"{project / 'fotos'} is not a folder" in r["error"] for r in rows), rows
    assert "unsupported operand" not in "".join(capfd.readouterr())


@pytest.mark.slow
def test_a_private_local_instance_says_nothing_of_tokens_or_tensorboard(tmp_path, data_root):
    """Issue 25, item 8: on a private local instance, Ray's note that token authentication is on, Tune's settings
    box and its "run tensorboard --logdir <Ray's session folder>" are not shown; the sweep's own lines are."""
    path = sweep_file(tmp_path, {"base": FAST, "axes": {"optim.lr": [0.01]}, "resources": {"cpu": 1}})
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AIR_NEW_OUTPUT")}
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "sweep", str(path), "--executor", "ray", "--out",
                           str(tmp_path / "out")], capture_output=True, text=True, timeout=600,
                          env={**env, "CNNLAB_NO_REEXEC": "1"})
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "[1/1]" in out and "completed" in out
    for noise in ("Token authentication is enabled", "tensorboard --logdir", "Configuration for experiment"):
        assert noise not in out, out
