"""Where a run's numbers go besides its own folder: trackers.

A tracker is any object with three methods, called by the training loop (:mod:`cnnlab.training.loop`):

- ``on_eval(row) -> str | None``: one learning-curve point (the ``metrics.jsonl`` row), after the
  checkpoints of that point are written. Returning a status (``"pruned"``) stops the run there, as a
  Ray Tune scheduler does with a hopeless trial;
- ``on_finish(summary)``: the run's ``summary.json``, once written;
- ``close()``: always called, also after a failure.

:func:`trackers_for` builds the ones a config asks for (``train.tensorboard``, ``train.mlflow``); callers
add their own (``train.run(..., trackers=[...])``; ``cnnlab.train(..., callbacks=[...])`` wraps a caller's objects
in :class:`Callback`, so any of the three methods may be left out). A sweep run (``train.sweep``, set by ``cnnlab sweep``)
is named by its settings (:func:`run_label`) in both, and grouped with its sweep's other runs.

MLflow is a service shared across machines (or a database file shared by processes: ``sqlite:///``, MLflow
3's store without a server, its artifacts in ``mlartifacts/`` beside it), so it must never cost a run: a
tracker that cannot reach it warns once and trains on; what it could not send (points, artifacts, status)
goes when the server answers again, at the latest when the run ends. ``<run>/mlflow.json`` names the MLflow
run, so a resume continues it and :func:`upload_run_files` (called by ``cnnlab.lifecycle`` once curves and
report exist) finds it.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Protocol

from cnnlab import runs
from cnnlab.config.schema import Config, flatten, mlflow_uri, sqlite_path
from cnnlab.errors import ConfigError, one_line

MLFLOW_FILE = "mlflow.json"  # in the run folder: the tracking URI, MLflow run id and the last step sent
ARTIFACTS = ("summary.json", "metrics.jsonl", "curves.png", "report.html")
MLFLOW_STATUS = {"completed": "FINISHED", "early_stopped": "FINISHED", "diverged": "FAILED", "failed": "FAILED",
                 "interrupted": "KILLED", "pruned": "KILLED"}
RETRY_AFTER_S = 60.0  # after a failed call, points wait this long (or for the run's end) before the next try
# A dead server must not stall training for minutes (MLflow's defaults: 7 retries, 120 s timeout);
# set in the environment to choose otherwise.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
LABEL_LENGTH = 200  # a run label names a folder: well under the usual 255-byte limit
ARTIFACTS_FOLDER = "mlartifacts"  # beside an sqlite database: <db folder>/mlartifacts/<experiment>/<run id>/...


class Tracker(Protocol):
    def on_eval(self, row: dict) -> str | None: ...

    def on_finish(self, summary: dict) -> None: ...

    def close(self) -> None: ...


def run_label(cfg: Config) -> str | None:
    """A sweep run's name from its settings and seed (``optim.lr=0.01,seed=1``); None outside a sweep.

    It names folders (TensorBoard runs), so path separators become ``_``; a label too long for a
    folder name is cut and ends with the run id, which keeps it unique."""
    sweep = cfg.train.sweep
    if sweep is None:
        return None
    shown = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in sweep.settings.items()]
    label = ",".join([*shown, f"seed={cfg.seed}"]).replace("/", "_").replace("\\", "_")
    return label if len(label) <= LABEL_LENGTH else f"{label[:LABEL_LENGTH - 14]}...,{sweep.run_id}"


class TensorBoard:
    """Event files in ``<run>/tensorboard`` (``tensorboard --logdir runs``): train/loss, val/accuracy, lr, ...
    at each evaluation point's step, flushed at once so TensorBoard shows live curves.

    A sweep run writes to ``<run>/tensorboard/<its settings>`` and, at its end, its settings and final
    metrics as hparams, so ``tensorboard --logdir <sweep folder>`` names runs by their settings and its
    HParams tab compares them."""

    def __init__(self, out_dir: Path, label: str | None = None, hparams: dict | None = None,
                 log: Callable[[str], None] | None = None):
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked at load)

        logdir = Path(out_dir) / "tensorboard"
        self.writer = SummaryWriter(str(logdir / label if label else logdir))
        self.hparams = hparams
        if log is not None:
            log(f"tensorboard: on, writing {logdir / label if label else logdir}; watch it with: "
                f"tensorboard --logdir {logdir}")

    def on_eval(self, row: dict) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.writer.add_scalar(key.replace("train_", "train/", 1).replace("val_", "val/", 1), value,
                                       row["step"])
        self.writer.flush()

    def on_finish(self, summary: dict) -> None:
        if self.hparams is None:
            return
        from torch.utils.tensorboard.summary import hparams

        final = {"hparam/test_accuracy": (summary.get("test") or {}).get("accuracy"),
                 "hparam/best_val_accuracy": (summary.get("best") or {}).get("val_accuracy"),
                 "hparam/final_train_loss": summary.get("final_train_loss")}
        final = {k: float(v) for k, v in final.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        values = {k: v if isinstance(v, (bool, int, float, str)) else json.dumps(v) for k, v in self.hparams.items()}
        # In this run's own folder, beside its curves: the HParams tab links the session to them.
        for part in hparams({**values, "status": summary.get("status", "")}, final):
            self.writer.file_writer.add_summary(part)
        step = (summary.get("time") or {}).get("steps")
        for key, value in final.items():
            self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


# ----------------------------------------------------------------------------- MLflow


def tracking_uri(uri: str) -> str:
    """``train.mlflow`` as MLflow takes it: a relative ``file:`` store made absolute (a resume or a worker
    elsewhere then finds the same store; a relative ``sqlite:///`` database was made absolute at load);
    servers as given."""
    if uri.startswith("file:") and not uri.startswith("file:/"):
        return Path(uri.removeprefix("file:")).resolve().as_uri()
    return mlflow_uri(uri)


def artifact_location(uri: str, experiment: str) -> str | None:
    """Where the artifacts of a new experiment go: for an ``sqlite:///`` store, ``mlartifacts/<experiment>``
    beside the database (MLflow's default without a server, ``./mlruns``, is relative to each process's folder
    and would scatter them); elsewhere None (the server's or file store's own place)."""
    path = sqlite_path(uri)
    return (path.parent / ARTIFACTS_FOLDER / experiment).as_uri() if path is not None else None


@contextmanager
def _database_lock(path: Path | None):
    """Holds an exclusive lock on the database's folder (Linux flock; no-op elsewhere or where the file system
    refuses it). MLflow creates the tables of a new sqlite database without a lock of its own: two sweep
    workers opening it at once would both run the migrations, and one would fail."""
    if path is None:
        yield
        return
    try:
        import fcntl

        fd = os.open(path.parent, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:
            pass
        yield
    finally:
        os.close(fd)  # releases the lock


def _client(uri: str):
    """An MlflowClient for ``uri``: short HTTP retries; MLflow's file store allowed (``train.mlflow`` names
    it on purpose; MLflow 3 refuses it by default in favour of a database); an sqlite database opened (its
    tables created, when new) under a lock, so concurrent sweep workers can share it."""
    for key, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient  # the mlflow extra (checked at load); imported only when asked for: slow

    database = sqlite_path(uri)
    if database is None:
        return MlflowClient(tracking_uri=uri)
    with _database_lock(database):
        client = MlflowClient(tracking_uri=uri)
        client.search_experiments(max_results=1)  # opens the store: creates and migrates a new database's tables
    return client


def _params(cfg: Config) -> dict[str, str]:
    """The flattened config as MLflow params (text), without where it is tracked or which sweep it is in."""
    out = {}
    for key, value in flatten(cfg.to_dict()).items():
        if key == "train.mlflow" or key.startswith("train.sweep"):
            continue
        out[key] = (value if isinstance(value, str) else json.dumps(value))[:6000]
    return out


def _metrics(row: dict) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


FINAL_SCORES = ("accuracy", "loss", "precision_macro", "recall_macro", "f1_macro")


def final_metrics(summary: dict) -> dict[str, float]:
    """The run's final scores as MLflow metrics: ``test_<score>`` and ``best_val_<score>`` (the best checkpoint
    scored at the end; ``val_*`` is the learning curve's name), ``best_train_<score>`` when the train split was
    scored, and ``final_train_loss``. Missing or non-finite values are left out."""
    out = {}
    for split, prefix in (("test", "test_"), ("val", "best_val_"), ("train", "best_train_")):
        scores = summary.get(split) if isinstance(summary.get(split), dict) else {}
        out.update({f"{prefix}{k}": scores.get(k) for k in FINAL_SCORES})
    out["final_train_loss"] = summary.get("final_train_loss")
    return _metrics(out)


def ui_hint(uri: str, experiment_id: str, run_id: str) -> str:
    """How to look at an MLflow run: its page on a server, or the ``mlflow ui`` command for a local store."""
    if uri.startswith(("http://", "https://")):
        return f"open {uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    allow = "MLFLOW_ALLOW_FILE_STORE=true " if uri.startswith("file:") else ""
    return f"{allow}mlflow ui --backend-store-uri {uri} (then open http://127.0.0.1:5000)"


class MLflow:
    """One MLflow run per cnnlab run: the config as params, every evaluation point as metrics at its step,
    tags (sweep, run_id, seed, status), the run folder's files as artifacts, and a status that mirrors
    cnnlab's (FINISHED, FAILED, KILLED). Experiment: the sweep's name for a sweep run, else the study name."""

    def __init__(self, cfg: Config, out_dir: Path, warn: Callable[[str], None] | None = None,
                 log: Callable[[str], None] | None = None):
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.uri = tracking_uri(cfg.train.mlflow)
        self.warn = warn or (lambda m: print(f"warning: {m}", file=sys.stderr, flush=True))
        self.log = log or (lambda m: None)
        self.warned, self.retry_at, self.status = False, 0.0, "running"
        saved = read_link(self.out_dir)
        # Continue the MLflow run only for a resume (last.pt restored) into the same store: a fresh or
        # --force run starts a new one.
        resumed = saved and saved.get("tracking_uri") == self.uri and (self.out_dir / "last.pt").exists()
        self.run_id = saved["run_id"] if resumed else None
        self.sent_step = int(saved.get("sent_step", -1)) if resumed else -1
        # reopen: mark the resumed MLflow run RUNNING again; its params were sent by the run it continues
        self.client, self.reopen, self.params_sent = None, bool(resumed), bool(resumed)
        self._try(self._send_points)  # the run shows in MLflow from its start

    # each call to the server goes through _try: a failure warns once and leaves the rest for later
    def _try(self, action: Callable[[], Any], force: bool = False) -> bool:
        if not force and time.monotonic() < self.retry_at:
            return False
        try:
            action()
            return True
        except Exception as e:  # noqa: BLE001 - a tracking server's trouble must never stop training
            self.retry_at = time.monotonic() + RETRY_AFTER_S
            if not self.warned:
                self.warned = True
                self.warn(f"MLflow at {self.uri} failed ({one_line(e)}); training goes on, and what was not sent "
                          "is sent when the server answers again (at the latest when the run ends)")
            return False

    def _start(self) -> None:
        """Create the MLflow run (its experiment too, when new) and note it in the run folder."""
        sweep = self.cfg.train.sweep
        name = sweep.name if sweep else self.cfg.name
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self.client.create_experiment(name, artifact_location(self.uri, name))
            except Exception:  # another run of the sweep created it first
                experiment_id = self.client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        tags = {"sweep": sweep.name if sweep else "", "run_id": sweep.run_id if sweep else self.out_dir.name,
                "seed": str(self.cfg.seed), "status": self.status, "study": self.cfg.name,
                "run_dir": str(self.out_dir.resolve())}
        run = self.client.create_run(experiment_id, tags=tags, run_name=run_label(self.cfg) or self.out_dir.name)
        self.run_id = run.info.run_id
        self._save_link()

    def _save_link(self) -> None:
        runs.write_json(self.out_dir / MLFLOW_FILE, {"tracking_uri": self.uri, "run_id": self.run_id,
                                                     "sent_step": self.sent_step})

    def _send_points(self) -> None:
        """Every metrics.jsonl point after the last one sent (all of them after an outage or a resume); the
        MLflow run and its params first, when not sent yet."""
        from mlflow.entities import Metric, Param

        if self.client is None:  # made here, not in __init__: a file store it cannot open raises at once
            self.client = _client(self.uri)
        if self.run_id is None:
            self._start()
            self._announce("tracking this run as")
        elif self.reopen:
            self.client.update_run(self.run_id, status="RUNNING")
            self.reopen = False
            self._announce("continuing")
        if not self.params_sent:
            params = [Param(k, v) for k, v in _params(self.cfg).items()]
            for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[i:i + 100])
            self.params_sent = True
        rows = [r for r in runs.read_jsonl(self.out_dir / "metrics.jsonl") if r.get("step", -1) > self.sent_step]
        if not rows:
            return
        now = int(time.time() * 1000)
        points = [Metric(k, v, now, int(r["step"])) for r in rows for k, v in _metrics(r).items()]
        for i in range(0, len(points), 1000):  # MLflow takes at most 1,000 metrics per batch
            self.client.log_batch(self.run_id, metrics=points[i:i + 1000])
        self.sent_step = max(int(r["step"]) for r in rows)
        self._save_link()

    def _announce(self, what: str) -> None:
        """The console line saying tracking is on: the MLflow run id, its experiment and how to see it."""
        experiment_id = self.client.get_run(self.run_id).info.experiment_id
        name = self.client.get_experiment(experiment_id).name
        self.log(f"mlflow: {what} run {self.run_id} (experiment {name!r}) in {self.uri}; see it with: "
                 f"{ui_hint(self.uri, experiment_id, self.run_id)}")

    def on_eval(self, row: dict) -> None:
        self._try(self._send_points)

    def on_finish(self, summary: dict) -> None:
        self.status = summary.get("status", "failed")

        def end() -> None:
            from mlflow.entities import Metric

            self._send_points()
            step = max(self.sent_step, 0)  # at the run's last point
            scores = [Metric(k, v, int(time.time() * 1000), step) for k, v in final_metrics(summary).items()]
            if scores:
                self.client.log_batch(self.run_id, metrics=scores)
            self.client.set_tag(self.run_id, "status", self.status)
            if summary.get("resumed"):
                self.client.set_tag(self.run_id, "resumed", json.dumps(summary["resumed"])[:5000])
            _upload(self.client, self.run_id, self.out_dir)
            self.client.set_terminated(self.run_id, MLFLOW_STATUS.get(self.status, "FAILED"))

        self._try(end, force=True)

    def close(self) -> None:
        pass


def read_link(out_dir: Path) -> dict | None:
    """``<run>/mlflow.json`` (which MLflow run tracks this folder), or None."""
    path = Path(out_dir) / MLFLOW_FILE
    try:
        link = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return link if isinstance(link, dict) and isinstance(link.get("run_id"), str) else None


def upload_run_files(out_dir: Path, log: Callable[[str], None] = print) -> list[str]:
    """Send the run folder's files (:data:`ARTIFACTS` that exist) to its MLflow run, if it has one; returns
    the names sent. ``cnnlab.lifecycle.finish_folder`` calls this once curves.png and report.html exist
    (summary.json then
    holds the doctor's findings); the tracker sent what existed as the run ended. A failure is logged."""
    link = read_link(out_dir)
    if link is None:
        return []
    try:
        return _upload(_client(link["tracking_uri"]), link["run_id"], Path(out_dir))
    except Exception as e:  # noqa: BLE001 - the run and its folder are fine without the copies
        log(f"warning: could not send the run's files to MLflow at {link['tracking_uri']}: {one_line(e)}")
        return []


def _upload(client, run_id: str, out_dir: Path) -> list[str]:
    names = [n for n in ARTIFACTS if (out_dir / n).is_file()]
    for name in names:
        client.log_artifact(run_id, str(out_dir / name))
    return names


def trackers_for(cfg: Config, out_dir: Path, log: Callable[[str], None] | None = None) -> list:
    """The trackers ``cfg`` asks for; each says on ``log`` that it is on and how to look at what it records."""
    out: list = []
    if cfg.train.tensorboard:
        sweep = cfg.train.sweep
        out.append(TensorBoard(out_dir, run_label(cfg),
                               {**sweep.settings, "seed": cfg.seed} if sweep is not None else None, log=log))
    if cfg.train.mlflow:
        out.append(MLflow(cfg, out_dir, log=log))
    return out


# ----------------------------------------------------------------------------- callers' callbacks

HOOKS = ("on_eval", "on_finish", "close")
CALLBACK_STOPS = ("early_stopped", "pruned", "interrupted")  # what on_eval may answer to stop the run


class Callback:
    """A caller's callback (``cnnlab.train(..., callbacks=[...])``) as a tracker: any object with one or more of
    :data:`HOOKS`, the others doing nothing. ``on_eval(row)`` gets a copy of each learning-curve row; its answer
    None (or False) goes on, True or ``"early_stopped"`` ends the run as early-stopped (finished and scored, as early
    stopping ends it), ``"pruned"`` as pruned, ``"interrupted"`` stops it resumably (this point's ``last.pt``, no
    final scoring; ``resume=True`` continues it). Anything else fails the run with a message naming the callback."""

    def __init__(self, obj: Any):
        self.obj = obj
        self.name = getattr(obj, "__name__", None) or type(obj).__name__

    def on_eval(self, row: dict) -> str | None:
        hook = getattr(self.obj, "on_eval", None)
        answer = hook(dict(row)) if hook is not None else None
        if answer is None or answer is False:
            return None
        if answer is True:
            return "early_stopped"
        if isinstance(answer, str) and answer in CALLBACK_STOPS:
            return answer
        raise ValueError(f"callback {self.name}: on_eval returned {answer!r}; return None to go on, or True, "
                         f"{', '.join(repr(s) for s in CALLBACK_STOPS)} to stop the run")

    def on_finish(self, summary: dict) -> None:
        if (hook := getattr(self.obj, "on_finish", None)) is not None:
            hook(summary)

    def close(self) -> None:
        if (hook := getattr(self.obj, "close", None)) is not None:
            hook()


def callbacks_as_trackers(callbacks: Any) -> list[Callback]:
    """``callbacks`` as the API takes them (None, or a list of objects with :data:`HOOKS`) as trackers; a
    ConfigError naming the argument for anything else, before the run starts."""
    if callbacks is None:
        return []
    if not isinstance(callbacks, (list, tuple)):
        raise ConfigError(f"callbacks: expected a list of objects with on_eval(row), on_finish(summary) or close() "
                          f"methods, got {type(callbacks).__name__}")
    for c in callbacks:
        if not any(callable(getattr(c, h, None)) for h in HOOKS):
            raise ConfigError(f"callbacks: {c!r:.80} has none of the methods {', '.join(HOOKS)}; a callback is an "
                              "object with one or more of them (on_eval(row) may return True to stop the run)")
    return [Callback(c) for c in callbacks]
