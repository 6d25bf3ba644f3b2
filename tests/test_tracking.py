"""cnnlab.training.tracking: trackers see every evaluation point and the summary, may stop a run, and are closed;
MLflow (an sqlite database, a file: store and a real server) and TensorBoard get what the run folder holds."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from cnnlab import lifecycle, runs
from cnnlab.training import loop as train
from cnnlab.training import tracking
from cnnlab.config.schema import ConfigError, flatten
from cnnlab.config.load import load_config
from cnnlab.sweeps.run import run_sweep


class Recorder:
    def __init__(self, stop_at_eval=None):
        self.rows, self.summary, self.closed, self.stop_at_eval = [], None, False, stop_at_eval

    def on_eval(self, row):
        self.rows.append(row)
        return "pruned" if self.stop_at_eval and len(self.rows) >= self.stop_at_eval else None

    def on_finish(self, summary):
        self.summary = summary

    def close(self):
        self.closed = True


def test_a_tracker_sees_every_point_and_the_summary(tmp_path, tiny_config):
    rec = Recorder()
    summary = train.run(tiny_config(**{"train.eval_every": 5}), tmp_path / "r", log=lambda *_: None, trackers=[rec])
    curve = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rec.rows] == [r["step"] for r in curve] and len(curve) >= 2
    assert rec.summary["status"] == summary["status"] == "completed" and rec.closed


def test_a_tracker_can_stop_the_run_as_pruned_keeping_its_best_checkpoint(tmp_path, tiny_config):
    rec = Recorder(stop_at_eval=1)
    summary = train.run(tiny_config(**{"train.eval_every": 5}), tmp_path / "r", log=lambda *_: None, trackers=[rec])
    assert summary["status"] == "pruned" and len(rec.rows) == 1 and rec.closed
    assert (tmp_path / "r" / "best.pt").exists() and summary["time"]["steps"] == 5
    assert summary["test"]["accuracy"] is not None  # the best weights so far are scored


def test_the_config_asks_for_tensorboard_only_when_set(tmp_path, tiny_config):
    assert tracking.trackers_for(tiny_config(), tmp_path) == []
    (board,) = tracking.trackers_for(tiny_config(**{"train.tensorboard": True}), tmp_path)
    board.on_eval({"step": 1, "train_loss": 0.5, "val_accuracy": float("nan")})
    board.close()
    assert any((tmp_path / "tensorboard").iterdir())


# ----------------------------------------------------------------------------- MLflow (real stores, real server)

TINY = {"name": "tiny", "data": {"name": "mnist", "train_limit": 1000, "val_size": 500},
        "model": {"name": "lenet5"}, "optim": {"name": "adam", "lr": 0.003},
        "train": {"epochs": 1, "batch_size": 100, "eval_every": 5, "progress": False, "threads": 1}}


def quiet(*_):
    pass


def client_for(uri):
    from mlflow import MlflowClient

    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores only when allowed
    return MlflowClient(tracking_uri=uri)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (sqlite store, proxied artifacts), stopped with all its
    processes (uvicorn workers included: its own process group) when the module's tests are done."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner processes: start-up time
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
           "--artifacts-destination", str(folder / "artifacts")]
    log = open(folder / "server.log", "w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 240  # the shared 2-core machine may be busy: start-up took 75 s there
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not answer: {(folder / 'server.log').read_text()[-2000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}"
    finally:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            try:
                os.killpg(server.pid, sig)  # the group: the server and the workers it started
            except ProcessLookupError:
                break
            t0 = time.monotonic()
            while time.monotonic() - t0 < wait and _group_alive(server.pid):
                server.poll()
                time.sleep(0.2)
        server.wait(timeout=5)
        log.close()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def check_tracked_run(client, run_dir: Path, experiment: str, status: str = "completed") -> object:
    """The MLflow run linked from ``run_dir`` holds what the folder holds; returns it."""
    link = json.loads((run_dir / "mlflow.json").read_text())
    run = client.get_run(link["run_id"])
    curve = runs.read_jsonl(run_dir / "metrics.jsonl")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert client.get_experiment(run.info.experiment_id).name == experiment
    assert run.data.params["optim.lr"] == str(summary["config"]["optim"]["lr"])
    assert run.data.params["model.name"] == "lenet5" and "train.sweep" not in run.data.params
    for key in ("val_accuracy", "val_loss", "train_loss", "train_accuracy", "lr"):
        history = client.get_metric_history(run.info.run_id, key)
        assert sorted(m.step for m in history) == [r["step"] for r in curve] and len(curve) >= 2
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r[key] for r in curve])
    assert run.data.tags["status"] == summary["status"] == status
    assert run.data.tags["seed"] == str(summary["seed"])
    assert run.info.status == {"completed": "FINISHED", "pruned": "KILLED"}[status]
    sent = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert sent == {n for n in tracking.ARTIFACTS if (run_dir / n).is_file()} and "summary.json" in sent
    return run


def test_train_mlflow_takes_a_database_a_server_or_a_file_store_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    here = tmp_path.resolve()
    # a relative database is made absolute at load: a worker or a resume elsewhere finds the same one
    assert load_config(None, {"train.mlflow": "sqlite:///mlflow.db"}).train.mlflow == f"sqlite:///{here}/mlflow.db"
    assert (load_config(None, {"train.mlflow": "sqlite:///a/../b.db?timeout=30"}).train.mlflow
            == f"sqlite:///{here}/b.db?timeout=30")
    assert load_config(None, {"train.mlflow": f"sqlite:///{here}/m.db"}).train.mlflow == f"sqlite:///{here}/m.db"
    assert load_config(None, {"train.mlflow": "file:./mlruns"}).train.mlflow == "file:./mlruns"
    assert tracking.tracking_uri("file:./mlruns") == (here / "mlruns").as_uri()  # when the run starts
    assert load_config(None, {"train.mlflow": "http://127.0.0.1:5000"}).train.mlflow == "http://127.0.0.1:5000"
    for bad in ("mlruns", "ftp://host", "http:/host", "file:", "sqlite:", "sqlite://", "sqlite:///",
                "sqlite:///:memory:", "sqlite://host/m.db", "postgres://host/db"):
        with pytest.raises(ConfigError, match=r"train\.mlflow: .* is not an MLflow tracking URI; use an SQLite "
                                              r"database \(sqlite:///mlflow.db"):
            load_config(None, {"train.mlflow": bad})


def test_a_database_in_a_missing_folder_or_a_folder_is_refused_at_load_with_exit_code_2(tmp_path, capsys):
    from cnnlab.cli import main

    with pytest.raises(ConfigError, match=r"^train\.mlflow: the database .*/nowhere/mlflow.db would go in the "
                                          r"folder .*/nowhere, which does not exist .*\(mkdir -p"):
        load_config(None, {"train.mlflow": f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"})
    with pytest.raises(ConfigError, match=r"^train\.mlflow: sqlite:///.* names the folder .*, not a database file; "
                                          r"name a file in it, e.g. sqlite:///.*/mlflow.db"):
        load_config(None, {"train.mlflow": f"sqlite:///{tmp_path}"})
    (tmp_path / "notes.txt").write_text("not a database")
    with pytest.raises(ConfigError, match=r"^train\.mlflow: .*notes.txt is a file but not an SQLite database"):
        load_config(None, {"train.mlflow": f"sqlite:///{tmp_path / 'notes.txt'}"})
    # the CLI: exit code 2, the message, no run folder (nothing trained)
    uri = f"sqlite:///{tmp_path / 'nowhere' / 'mlflow.db'}"
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    assert main(["train", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "r"), f"train.mlflow={uri}"]) == 2
    assert "cnnlab: error: train.mlflow: the database" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "nowhere").exists()


def test_train_mlflow_without_mlflow_installed_says_how_to_install_it(monkeypatch):
    # mlflow out of reach, as on a machine without the extra
    monkeypatch.setattr(sys, "path", [p for p in sys.path if "site-packages" not in p])
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ConfigError, match=r"train\.mlflow: .* pip install 'cnnlab\[mlflow\]'"):
        load_config(None, {"train.mlflow": "http://127.0.0.1:5000"})


def test_a_run_is_tracked_in_an_sqlite_database_its_artifacts_beside_it(tmp_path, data_root, monkeypatch):
    import mlflow

    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(home)
    cfg = load_config(None, {**flatten(TINY), "train.mlflow": "sqlite:///mlflow.db"})  # relative: resolved here
    uri = f"sqlite:///{home.resolve() / 'mlflow.db'}"
    assert cfg.train.mlflow == uri
    monkeypatch.chdir(elsewhere)  # a resume, a sweep worker, a Ray trial: another folder, the same database
    train.run(cfg, tmp_path / "r", log=quiet)
    lifecycle.finish_folder(tmp_path / "r", log=quiet)
    assert (home / "mlflow.db").is_file() and not (elsewhere / "mlflow.db").exists()
    assert not (elsewhere / "mlruns").exists() and not (elsewhere / "mlartifacts").exists()
    run = check_tracked_run(client_for(uri), tmp_path / "r", experiment="tiny")
    # found by MLflow's own search on that store, with params, metrics and artifacts
    mlflow.set_tracking_uri(uri)
    try:
        (hit,) = mlflow.search_runs(experiment_names=["tiny"], filter_string="tags.run_id = 'r'", output_format="list")
    finally:
        mlflow.set_tracking_uri(None)  # and MLFLOW_TRACKING_URI, which it set: later tests' processes inherit it
    assert hit.info.run_id == run.info.run_id and hit.data.params["model.name"] == "lenet5"
    assert hit.data.metrics["val_accuracy"] == pytest.approx(runs.read_jsonl(tmp_path / "r" / "metrics.jsonl")[-1]
                                                            ["val_accuracy"])
    # the artifacts: beside the database, in mlartifacts/<experiment>/<MLflow run id>/artifacts
    where = home.resolve() / "mlartifacts" / "tiny" / run.info.run_id / "artifacts"
    assert run.info.artifact_uri == where.as_uri()
    assert {p.name for p in where.iterdir()} == {n for n in tracking.ARTIFACTS if (tmp_path / "r" / n).is_file()}
    assert "report.html" in {p.name for p in where.iterdir()}


def test_a_run_is_tracked_in_a_file_store(tmp_path, data_root):
    uri = f"file:{tmp_path / 'store'}"
    cfg = load_config(None, {**flatten(TINY), "train.mlflow": uri})
    train.run(cfg, tmp_path / "r", log=quiet)
    lifecycle.finish_folder(tmp_path / "r", log=quiet)  # curves.png, report.html: sent to the same MLflow run
    run = check_tracked_run(client_for(uri), tmp_path / "r", experiment="tiny")
    assert run.data.tags["run_id"] == "r" and run.info.run_name == "r"
    assert "report.html" in {a.path for a in client_for(uri).list_artifacts(run.info.run_id)}


def test_a_resume_continues_the_same_mlflow_run_and_a_pruned_run_is_killed(tmp_path, data_root):
    uri = f"file:{tmp_path / 'store'}"
    half = load_config(None, {**flatten(TINY), "train.mlflow": uri, "train.epochs": 0.5})
    first = train.run(half, tmp_path / "r", log=quiet, trackers=[Recorder(stop_at_eval=1)])
    run_id = json.loads((tmp_path / "r" / "mlflow.json").read_text())["run_id"]
    assert first["status"] == "pruned" and client_for(uri).get_run(run_id).info.status == "KILLED"
    whole = load_config(None, {**flatten(TINY), "train.mlflow": uri})
    train.run(whole, tmp_path / "r", resume=True, log=quiet)
    assert json.loads((tmp_path / "r" / "mlflow.json").read_text())["run_id"] == run_id
    run = check_tracked_run(client_for(uri), tmp_path / "r", experiment="tiny")  # each point once
    assert run.info.run_id == run_id and "train.epochs" in run.data.tags["resumed"]


class Crash(Recorder):
    def on_eval(self, row):
        raise RuntimeError("a crash at the first evaluation point")


def test_a_failed_run_is_failed_in_mlflow_with_what_it_had(tmp_path, data_root):
    uri = f"file:{tmp_path / 'store'}"
    with pytest.raises(RuntimeError, match="a crash"):
        train.run(load_config(None, {**flatten(TINY), "train.mlflow": uri}), tmp_path / "r", log=quiet,
                  trackers=[Crash()])
    link = json.loads((tmp_path / "r" / "mlflow.json").read_text())
    run = client_for(uri).get_run(link["run_id"])
    assert run.info.status == "FAILED" and run.data.tags["status"] == "failed"
    assert [m.step for m in client_for(uri).get_metric_history(run.info.run_id, "val_accuracy")] == [5]
    assert "summary.json" in {a.path for a in client_for(uri).list_artifacts(run.info.run_id)}


def test_an_unreachable_server_warns_once_and_the_run_goes_on(tmp_path, data_root, capfd):
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    summary = train.run(load_config(None, {**flatten(TINY), "train.mlflow": uri}), tmp_path / "r", log=quiet)
    assert summary["status"] == "completed" and len(runs.read_jsonl(tmp_path / "r" / "metrics.jsonl")) == 2
    err = capfd.readouterr().err
    assert err.count(f"warning: MLflow at {uri} failed") == 1 and "training goes on" in err


class Unblock:
    """At the run's first evaluation point, removes the file that stands where the MLflow store goes."""

    def __init__(self, path: Path):
        self.path = path

    def on_eval(self, row):
        self.path.unlink(missing_ok=True)

    def on_finish(self, summary):
        pass

    def close(self):
        pass


def test_a_store_that_comes_back_gets_every_point_by_the_end_of_the_run(tmp_path, data_root, capfd):
    store = tmp_path / "store"
    store.write_text("not a folder: MLflow cannot open the store until the run's first point")
    uri = f"file:{store}"
    summary = train.run(load_config(None, {**flatten(TINY), "train.mlflow": uri}), tmp_path / "r", log=quiet,
                        trackers=[Unblock(store)])
    assert summary["status"] == "completed" and capfd.readouterr().err.count("warning: MLflow at") == 1
    check_tracked_run(client_for(uri), tmp_path / "r", experiment="tiny")  # both points, status, artifacts


def test_turning_mlflow_on_keeps_a_sweeps_run_ids():
    from cnnlab.sweeps.plan import plan_sweep

    spec = {"base": TINY, "axes": {"optim.lr": [0.003, 0.001]}}
    tracked = {"base": {**TINY, "train": {**TINY["train"], "mlflow": "http://127.0.0.1:5000"}},
               "axes": {"optim.lr": [0.003, 0.001]}}
    assert [r.run_id for r in plan_sweep(spec).runs] == [r.run_id for r in plan_sweep(tracked).runs]


def run_tiny_sweep(folder: Path, uri: str, workers: int = 1) -> tuple[Path, list[dict]]:
    spec = {"base": {**TINY, "train": {**TINY["train"], "mlflow": uri, "tensorboard": True}},
            "axes": {"optim.lr": [0.003, 0.001]}, "seeds": [1]}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lr_sweep.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    rows = run_sweep(folder / "lr_sweep.yaml", out_dir=folder / "out", workers=workers)
    assert [r["status"] for r in rows] == ["completed", "completed"]
    return folder / "out", rows


def check_sweep_experiment(client, out: Path, rows: list[dict]) -> None:
    experiment = client.get_experiment_by_name("lr_sweep")
    tracked = client.search_runs([experiment.experiment_id])
    assert sorted(r.info.run_name for r in tracked) == ["optim.lr=0.001,seed=1", "optim.lr=0.003,seed=1"]
    assert {r.data.tags["run_id"] for r in tracked} == {r["run_id"] for r in rows}
    assert {r.data.tags["sweep"] for r in tracked} == {"lr_sweep"}
    for row in rows:
        check_tracked_run(client, out / row["run_dir"], experiment="lr_sweep")


@pytest.fixture(scope="module")
def file_sweep(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("file-sweep")
    uri = f"file:{folder / 'store'}"
    return uri, *run_tiny_sweep(folder, uri)


def test_a_sweep_lands_in_one_experiment_of_a_file_store(file_sweep):
    uri, out, rows = file_sweep
    check_sweep_experiment(client_for(uri), out, rows)


def test_two_sweep_workers_share_a_new_sqlite_database(tmp_path, data_root, capfd):
    """Both workers open the database at their runs' start: MLflow creates a new database's tables without a
    lock, so without cnnlab's one of them failed the migration (warned, and sent its points a minute late)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    out, rows = run_tiny_sweep(tmp_path / "sweep", uri, workers=2)
    err = capfd.readouterr().err
    assert "warning: MLflow" not in err and all("MLflow" not in (out / r["run_dir"] / "train.log").read_text()
                                                for r in rows)
    check_sweep_experiment(client_for(uri), out, rows)
    folders = {p.name for p in (tmp_path / "mlartifacts" / "lr_sweep").iterdir()}
    assert folders == {json.loads((out / r["run_dir"] / "mlflow.json").read_text())["run_id"] for r in rows}


def test_a_file_store_is_written_without_mlflows_variable_but_read_with_it(tmp_path, data_root):
    """MLflow 3 refuses a file: store unless MLFLOW_ALLOW_FILE_STORE=true: cnnlab sets it for itself (the
    user named the store), but reading the runs back elsewhere needs it, as the README says."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_ALLOW_FILE_STORE", "MLFLOW_TRACKING_URI")}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    uri = f"file:{tmp_path / 'mlruns'}"
    done = subprocess.run([sys.executable, "-m", "cnnlab.cli", "train", str(tmp_path / "tiny.yaml"), "--out",
                           str(tmp_path / "r"), f"train.mlflow={uri}"], env=env, capture_output=True, text=True)
    assert done.returncode == 0 and "warning" not in done.stderr, done.stderr[-2000:]
    read = ("import sys, mlflow; mlflow.set_tracking_uri(sys.argv[1]); "
            "print(len(mlflow.search_runs(experiment_names=['tiny'], output_format='list')))")
    denied = subprocess.run([sys.executable, "-c", read, uri], env=env, capture_output=True, text=True)
    assert denied.returncode != 0 and "MLFLOW_ALLOW_FILE_STORE=true" in denied.stderr
    allowed = subprocess.run([sys.executable, "-c", read, uri], env={**env, "MLFLOW_ALLOW_FILE_STORE": "true"},
                             capture_output=True, text=True)
    assert allowed.returncode == 0 and allowed.stdout.split()[-1] == "1", allowed.stderr[-2000:]
    check_tracked_run(client_for(uri), tmp_path / "r", experiment="tiny")


def test_tensorboard_names_sweep_runs_by_their_settings_with_hparams(file_sweep):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    _, out, rows = file_sweep
    for row in rows:
        label = f"optim.lr={row['settings']['optim.lr']},seed=1"
        (folder,) = (out / row["run_dir"] / "tensorboard").iterdir()
        assert folder.name == label
        events = EventAccumulator(str(folder))
        events.Reload()
        assert [e.step for e in events.Scalars("val/accuracy")] == [5, 10]
        session = HParamsPluginData.FromString(events.PluginTagToContent("hparams")["_hparams_/session_start_info"])
        values = session.session_start_info.hparams
        assert values["optim.lr"].number_value == row["settings"]["optim.lr"] and values["seed"].number_value == 1
        assert events.Scalars("hparam/test_accuracy")[0].value == pytest.approx(row["test"]["accuracy"])


@pytest.mark.slow
def test_a_run_is_tracked_on_a_real_mlflow_server(mlflow_server, tmp_path, data_root):
    cfg = load_config(None, {**flatten(TINY), "name": "served", "train.mlflow": mlflow_server})
    train.run(cfg, tmp_path / "r", log=quiet)
    lifecycle.finish_folder(tmp_path / "r", log=quiet)
    run = check_tracked_run(client_for(mlflow_server), tmp_path / "r", experiment="served")
    assert "report.html" in {a.path for a in client_for(mlflow_server).list_artifacts(run.info.run_id)}


@pytest.mark.slow
def test_a_sweep_lands_in_one_experiment_on_a_real_mlflow_server(mlflow_server, tmp_path, data_root):
    out, rows = run_tiny_sweep(tmp_path, mlflow_server)
    check_sweep_experiment(client_for(mlflow_server), out, rows)


def test_the_console_says_tracking_is_on_and_the_final_scores_are_mlflow_metrics(tmp_path, data_root):
    # Issue 25 (9): nothing said tracking was on, which MLflow run it was or how to look at it, and the final
    # test/val scores were only inside summary.json.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = load_config(None, {**flatten(TINY), "train.mlflow": uri, "train.tensorboard": True})
    said: list[str] = []
    summary = train.run(cfg, tmp_path / "r", log=said.append)
    run_id = json.loads((tmp_path / "r" / "mlflow.json").read_text())["run_id"]
    client = client_for(uri)
    run = client.get_run(run_id)
    line = next(m for m in said if m.startswith("mlflow:"))
    assert f"run {run_id} (experiment 'tiny') in {uri}" in line
    assert f"mlflow ui --backend-store-uri {uri}" in line
    assert any(m.startswith("tensorboard: on") and f"tensorboard --logdir {tmp_path / 'r' / 'tensorboard'}" in m
               for m in said), said
    metrics = run.data.metrics
    for key in ("accuracy", "loss", "f1_macro", "precision_macro", "recall_macro"):
        assert metrics[f"test_{key}"] == pytest.approx(summary["test"][key])
        assert metrics[f"best_val_{key}"] == pytest.approx(summary["val"][key])
    assert metrics["final_train_loss"] == pytest.approx(summary["final_train_loss"])
    (point,) = client.get_metric_history(run_id, "test_accuracy")
    assert point.step == runs.read_jsonl(tmp_path / "r" / "metrics.jsonl")[-1]["step"]  # at the run's last point
    # a resume says it continues the same MLflow run
    said.clear()
    train.run(load_config(None, {**flatten(TINY), "train.mlflow": uri, "train.epochs": 2}), tmp_path / "r",
              resume=True, log=said.append)
    assert any(m.startswith(f"mlflow: continuing run {run_id}") for m in said), said


def test_how_to_see_a_run_on_a_server_is_its_page():
    assert tracking.ui_hint("http://mlflow.lab:5000/", "3", "abc") == "open http://mlflow.lab:5000/#/experiments/3/runs/abc"
    assert tracking.ui_hint("file:///x/store", "1", "r").startswith("MLFLOW_ALLOW_FILE_STORE=true mlflow ui ")
