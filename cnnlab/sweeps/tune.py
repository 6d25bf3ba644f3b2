"""The Ray Tune executor of a sweep: each run a Tune trial, on one machine or a cluster.

What Tune sees is what a Ray Tune user expects: a trial's config is the run's settings
(``{"optim.lr": 0.01, "seed": 1}``), each evaluation point is a reported result (``val.accuracy``,
``val.loss``, ``train.loss``, ``epoch``), and Tune's own schedulers (ASHA, median stopping) and
searcher (Optuna) decide which runs go on and which settings come next. A run a scheduler stops
finishes as ``pruned``: it scores its best weights and keeps its curve and checkpoints.

No shared disk is needed. A trial trains in a scratch folder on its own node (``$CNNLAB_SCRATCH``,
else the system temp folder, under ``cnnlab-ray``) and sends its run folder's new files, at each
evaluation point and at the end, to a small actor pinned to the driver's node (:class:`Sink`),
which writes them atomically into the sweep folder. The row of a finished run travels the same
way, and the driver process alone appends it to ``results.jsonl``.

Why a class trainable rather than a function: when a scheduler stops a function trainable, Ray
2.x raises ``SystemExit`` inside its ``tune.report`` and then ends the actor, so the run would die
mid-way. Here the run trains in a thread that waits at each evaluation point for Tune's answer;
Tune's ``cleanup`` (or ``reset_config`` when the actor is reused) answers "pruned" and waits for
the run to finish. Should the actor die anyway, the driver records ``pruned`` from the files it
already received.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from cnnlab import runs
from cnnlab.config.schema import ConfigError
from cnnlab.reporting.results import RESULTS, append_row, row_from_summary
from cnnlab.runs import Status, read_metrics, read_summary
from cnnlab.sweeps.plan import METRIC_MODES  # the sweep file's grammar is plan's; Tune only runs it
from cnnlab.sweeps.task import execute_task, task_from_settings

# What a trial reports at each evaluation point (Tune's name: the metrics.jsonl field); which way is better:
# plan.METRIC_MODES.
REPORTED = {"val.accuracy": "val_accuracy", "val.loss": "val_loss", "train.loss": "train_loss",
            "train.accuracy": "train_accuracy", "epoch": "epoch", "step": "step", "lr": "lr"}
CONNECT_TIMEOUT_S = 5.0  # a cluster address that does not answer within this is reported, not waited on
SCRATCH_ENV = "CNNLAB_SCRATCH"


# ----------------------------------------------------------------------------- search spaces


def _tune_domain(spec: Any):
    """A range (plan.check_range's grammar) or a list of values as Ray Tune's search domain."""
    from ray import tune

    if isinstance(spec, list):
        return tune.choice(spec)
    kind, arg = next(iter(spec.items()))
    return {"loguniform": lambda: tune.loguniform(*arg), "uniform": lambda: tune.uniform(*arg),
            "int": lambda: tune.randint(arg[0], arg[1] + 1), "choice": lambda: tune.choice(arg)}[kind]()


# ----------------------------------------------------------------------------- what the driver runs


@dataclass
class RayJob:
    """Everything the Ray executor needs from the sweep (plain data)."""

    out: Path
    tasks: list[dict]  # a grid's runs to do (empty for a search)
    workers: int = 1  # the most trials at once (1: as many as the resources allow)
    address: str | None = None
    resources: dict = field(default_factory=dict)
    scheduler: dict | None = None
    search: dict | None = None
    space: dict = field(default_factory=dict)  # a search's axes: {key: list | {kind: arg}}
    base: dict = field(default_factory=dict)  # a search's study mapping, to build each sampled run
    seed: int = 0  # a search's runs' seed
    devices: tuple = ("auto",)  # the runs' train.device values (is a GPU wanted by default?)
    epochs: int = 1  # the runs' longest planned training, in epochs (ASHA's max_t)


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or $RAY_ADDRESS), else start a private local instance; True when we
    started or joined Ray here (and must shut it down). An instance this process already runs is used as is."""
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {k: os.environ[k] for k in ("CNNLAB_DATA", "GLIBC_TUNABLES") if k in os.environ}
    runtime_env = {"env_vars": env} if env else None
    if address is None:
        # a private instance: Ray's note that token authentication is on (nothing to do) is not shown
        quiet = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level, _ = quiet.level, quiet.setLevel(logging.ERROR)
        try:
            ray.init(address="local", include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
        finally:
            quiet.setLevel(level)
        return True
    probe(address)
    try:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
    except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError or ValueError here
        raise ConfigError(connection_problem(address, e)) from None
    return True


def probe(address: str | None) -> None:
    """Ray waits minutes on an address nobody answers: find out in seconds, and say how to fix it."""
    if not address or address in ("local", "auto"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"--address {address!r} is not HOST:PORT; give the address `ray start --head` printed "
                          "(e.g. 10.0.0.5:6379), or leave --address out to start a private local Ray instance")
    try:
        socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise ConfigError(f"no Ray cluster answers at {address} ({e.strerror or e}): start its head with "
                          f"`ray start --head --port={port}` on {host}, check the host and port (and any firewall), "
                          "or leave --address out (and unset RAY_ADDRESS) to start a private local Ray instance") \
            from None


def connection_problem(address: str, e: BaseException) -> str:
    """Ray's connection errors as one paragraph with the fix."""
    text = " ".join(str(e).split())
    low = text.lower()
    if "version mismatch" in low or "mismatch" in low and "python" in low:
        return (f"the Ray cluster at {address} runs another Ray or Python version than this machine ({text[:300]}); "
                "install the cluster's Ray version here (pip install 'ray[tune]==X.Y.Z') or restart the cluster "
                "with this one")
    if "auth" in low or "token" in low or "permission" in low:
        return (f"the Ray cluster at {address} refused this client ({text[:300]}): it uses token authentication; "
                "run with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set to the cluster's token (the one `ray start "
                "--head` used, from its ~/.ray/auth_token or RAY_AUTH_TOKEN)")
    return (f"cannot join the Ray cluster at {address}: {text[:300]}. It answers, so either it uses token "
            "authentication (then run with RAY_AUTH_MODE=token and RAY_AUTH_TOKEN set to the token the head was "
            "started with; `ray start --head` turns it on when ~/.ray/auth_token exists) or it runs another Ray "
            "version than this machine (compare `ray --version` on both); `ray status --address "
            f"{address}` from this shell shows which, or leave --address out to start a private local Ray instance")


def run_resources(requested: dict, devices: tuple, cluster: dict, nodes: list[dict]) -> dict:
    """What one run asks Ray for: the sweep's resources, else 1 CPU, and 1 GPU when the cluster has GPUs and
    the runs' train.device is auto or cuda. Refused when no node of the cluster could ever hold one run."""
    cpu = requested.get("cpu", 1.0)
    wants_gpu = all(d == "auto" or d.startswith("cuda") for d in devices)
    gpu = requested.get("gpu", 1.0 if cluster.get("GPU", 0) > 0 and wants_gpu else 0.0)
    fits = [n for n in nodes if n.get("CPU", 0) >= cpu and n.get("GPU", 0) >= gpu]
    if nodes and not fits:
        biggest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)))
        raise ConfigError(f"each run asks Ray for {cpu:g} CPU and {gpu:g} GPU, but no node of the cluster has that "
                          f"much (the largest: {biggest.get('CPU', 0):g} CPU, {biggest.get('GPU', 0):g} GPU); lower "
                          "resources (--cpus-per-run / --gpus-per-run or the sweep's resources: {cpu: N, gpu: G}) or "
                          "add a larger node")
    return {"cpu": cpu, "gpu": gpu}


def cluster_resources(requested: dict, devices: tuple) -> dict:
    """:func:`run_resources` against the cluster Ray is connected to."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return run_resources(requested, devices, ray.cluster_resources(), nodes)


def run_job(job: RayJob, on_row: Callable[[dict], None]) -> None:
    """Run the job's trials with Ray Tune; every run ends with one row, written here only."""
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    started = connect(job.address)  # run_sweep has joined already: this is for callers of run_job alone
    try:
        res = cluster_resources(job.resources, job.devices)
        here = ray.get_runtime_context().get_node_id()
        sink = ray.remote(num_cpus=0)(Sink).options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=here, soft=False)).remote(str(job.out))
        done = _Rows(job, sink, on_row)
        if not _samples(job, done):
            return
        for task in job.tasks:
            if task["force"]:  # leftovers of a crashed run: the trial starts afresh, so does the copy here
                _clear(job.out / task["run_dir"])
        ctx = TrialContext({_key(t["settings"], t["seed"]): t for t in job.tasks}, job.base, job.seed,
                           _scratch_name(job.out), sink, max(1, int(res["cpu"])))
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(_trainable_class(), ctx=ctx), res),
            param_space=_param_space(job),
            tune_config=tune.TuneConfig(search_alg=_searcher(job), scheduler=_scheduler(job),
                                        num_samples=_samples(job, done),
                                        max_concurrent_trials=job.workers if job.workers > 1 else None,
                                        reuse_actors=True),
            run_config=tune.RunConfig(name=f"sweep-{time.strftime('%Y%m%d-%H%M%S')}",
                                      storage_path=str(scratch_root() / "tune"), verbose=0,
                                      callbacks=[_progress(done)], failure_config=tune.FailureConfig(max_failures=0)),
        )
        # Ctrl-C must leave the runs resumable (their last.pt is here), not let Tune stop them, which a trial
        # could not tell from a scheduler's stop and would record as pruned
        os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
        # Tune's own console (its settings box, "run tensorboard --logdir <Ray's session folder>"): the sweep's
        # progress lines say what happens; the older output honours verbose=0
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        results = tuner.fit()
        done.collect()
        for r in results:
            task = ctx.task_for(r.config, str(job.out))
            if task["run_id"] not in done.seen:
                done.record(_ended_without_row(task, job.out, r.error))
    finally:
        if started:
            disconnect()


def disconnect() -> None:
    import ray

    ray.shutdown()


def _samples(job: RayJob, done: "_Rows") -> int:
    if job.search:
        return max(0, job.search["trials"] - len(done.previous))
    return len(job.tasks)


def _param_space(job: RayJob) -> dict:
    """The search space Tune shows: a search's axes, or each swept key's values (the searcher below
    hands out the planned runs themselves)."""
    if job.search:
        return {**{k: _tune_domain(v) for k, v in job.space.items()}, "seed": job.seed}
    values: dict[str, list] = {}
    for t in job.tasks:
        for k, v in {**t["settings"], "seed": t["seed"]}.items():
            if v not in values.setdefault(k, []):
                values[k].append(v)
    return {k: _tune_domain(v) for k, v in values.items()}


def _searcher(job: RayJob):
    from ray.tune.search import BasicVariantGenerator

    if not job.search:  # the planned runs, in plan order: Tune's config is each run's settings and seed
        return BasicVariantGenerator(points_to_evaluate=[{**t["settings"], "seed": t["seed"]} for t in job.tasks])
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise ConfigError("search: optuna needs the optuna package: pip install cnnlab[ray]") from None
    metric = job.search["metric"]
    seed = job.search["seed"] if job.search["seed"] is not None else job.seed
    previous = _Rows.finished(job.out)  # a re-run tells Optuna what the runs before it found
    points = [{**{k: r["settings"].get(k) for k in job.space}, "seed": job.seed} for r in previous]
    rewards = [_row_metric(r, metric) for r in previous]
    keep = [i for i, v in enumerate(rewards) if v is not None]
    return OptunaSearch(metric=metric, mode=METRIC_MODES[metric], sampler=optuna.samplers.TPESampler(seed=seed),
                        points_to_evaluate=[points[i] for i in keep] or None,
                        evaluated_rewards=[rewards[i] for i in keep] or None)


def _row_metric(row: dict, metric: str) -> float | None:
    """What a finished row says of ``metric`` (its best validation accuracy, or its final train loss)."""
    if metric == "val.accuracy":
        return (row.get("best") or {}).get("val_accuracy")
    if metric == "train.loss":
        return row.get("final_train_loss")
    return None


def _scheduler(job: RayJob):
    from ray.tune.schedulers import ASHAScheduler, MedianStoppingRule

    s = job.scheduler
    if not s:
        return None
    mode = METRIC_MODES[s["metric"]]
    if s["name"] == "asha":
        return ASHAScheduler(time_attr="epoch", metric=s["metric"], mode=mode, max_t=max(job.epochs, s["grace_epochs"]),
                             grace_period=s["grace_epochs"], reduction_factor=s["reduction_factor"])
    return MedianStoppingRule(time_attr="epoch", metric=s["metric"], mode=mode, grace_period=s["grace_epochs"],
                              min_samples_required=s["min_samples"])


def _progress(rows: "_Rows"):
    from ray import tune

    class Progress(tune.Callback):
        """Rows reach the driver through the sink: fetch them as trials report, so progress shows live."""

        def on_trial_result(self, iteration, trials, trial, result, **info):
            rows.collect()

        def on_trial_complete(self, iteration, trials, trial, **info):
            rows.collect()

    return Progress()


class _Rows:
    """The driver's side of the results: takes rows from the sink, appends each once to results.jsonl."""

    def __init__(self, job: RayJob, sink, on_row: Callable[[dict], None]):
        self.job, self.sink, self.on_row = job, sink, on_row
        self.seen: set[str] = set()
        self.previous = self.finished(job.out) if job.search else []

    @staticmethod
    def finished(out: Path) -> list[dict]:
        from cnnlab.reporting.results import load_results
        from cnnlab.runs import FINAL_STATUSES

        return [r for r in load_results(out, log=None) if r.get("status") in FINAL_STATUSES]

    def collect(self) -> None:
        import ray

        for row in ray.get(self.sink.take_rows.remote()):
            self.record(row)

    def record(self, row: dict) -> None:
        if row["run_id"] in self.seen:
            return
        self.seen.add(row["run_id"])
        append_row(self.job.out / RESULTS, row)
        self.on_row(row)


def _ended_without_row(task: dict, out: Path, error: Any) -> dict:
    """A trial that ended without sending its row: stopped by the scheduler while its actor was ended (pruned,
    from the curve and checkpoints already received), or failed."""
    run_dir = out / task["run_dir"]
    metrics = read_metrics(run_dir)
    if error is None and metrics:
        summary = {**(read_summary(run_dir) or {}), "status": Status.PRUNED,
                   "final_train_loss": metrics[-1].get("train_loss"), "seed": task["seed"]}
        scored = [m for m in metrics if isinstance(m.get("val_accuracy"), (int, float))]
        if scored:
            best = max(scored, key=lambda m: m["val_accuracy"])
            summary["best"] = {"val_accuracy": best["val_accuracy"], "epoch": best["epoch"], "step": best["step"]}
        summary.setdefault("error", None)
        runs.write_json(run_dir / "summary.json", summary)
        return row_from_summary(task, summary)
    return row_from_summary(task, {"status": Status.FAILED}, error=f"Ray trial failed: {error}")


def _clear(run_dir: Path) -> None:
    if run_dir.is_dir():
        for p in run_dir.iterdir():
            if p.name != runs.LOCK_NAME:
                shutil.rmtree(p) if p.is_dir() else p.unlink()


# ----------------------------------------------------------------------------- files between nodes


def scratch_root() -> Path:
    """Where trials on this node keep their run folders: $CNNLAB_SCRATCH, else <temp>/cnnlab-ray."""
    return Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "cnnlab-ray")


def _scratch_name(out: Path) -> str:
    """One scratch folder per sweep folder (two sweeps' runs never mix)."""
    return hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:12]


def _shipped(path: Path) -> bool:
    return not path.name.startswith(".")  # run locks and half-written temporary files stay on the node


class Sink:
    """The driver node's end (a Ray actor pinned there): writes the run files trials send, atomically,
    into the sweep folder, and holds finished rows until the driver takes them."""

    def __init__(self, out: str):
        self.out = Path(out).resolve()
        self.rows: list[dict] = []

    def _path(self, run_dir: str, rel: str) -> Path:
        path = (self.out / run_dir / rel).resolve()
        if not path.is_relative_to(self.out / "runs"):
            raise ValueError(f"refusing to write {rel!r} outside the sweep's run folders")
        return path

    def write(self, run_dir: str, files: dict[str, bytes]) -> None:
        for rel, data in files.items():
            path = self._path(run_dir, rel)
            path.parent.mkdir(parents=True, exist_ok=True)
            runs.write_bytes(path, data)

    def read(self, run_dir: str) -> dict[str, bytes]:
        """A run folder's files, for a trial that resumes it on another node."""
        root = self._path(run_dir, ".")
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
                if p.is_file() and _shipped(p)} if root.is_dir() else {}

    def put_row(self, row: dict) -> None:
        self.rows.append(row)

    def take_rows(self) -> list[dict]:
        rows, self.rows = self.rows, []
        return rows


class _Shipper:
    """Sends a scratch run folder's new and changed files to the sink."""

    def __init__(self, sink, local: Path, run_dir: str):
        self.sink, self.local, self.run_dir = sink, local, run_dir
        self.sent: dict[str, tuple] = {}

    def ship(self) -> None:
        import ray

        files = {}
        for p in sorted(self.local.rglob("*")):
            if p.is_file() and _shipped(p):
                st, rel = p.stat(), str(p.relative_to(self.local))
                if self.sent.get(rel) != (st.st_mtime_ns, st.st_size):
                    files[rel], self.sent[rel] = p.read_bytes(), (st.st_mtime_ns, st.st_size)
        if files:
            ray.get(self.sink.write.remote(self.run_dir, files))


# ----------------------------------------------------------------------------- the trial


def _key(settings: dict, seed: int) -> str:
    return json.dumps({"settings": settings, "seed": seed}, sort_keys=True, default=str)


@dataclass
class TrialContext:
    """What every trial gets (pickled once by tune.with_parameters)."""

    tasks: dict[str, dict]  # a grid's tasks by settings and seed
    base: dict  # a search's study mapping
    seed: int
    scratch: str  # the sweep's scratch folder name
    sink: Any
    threads: int

    def task_for(self, config: dict, out_dir: str) -> dict:
        """The task of a trial's config; ``out_dir``: where its run folder goes (scratch on a trial's node)."""
        settings = {k: v for k, v in config.items() if k != "seed"}
        task = self.tasks.get(_key(settings, config.get("seed", self.seed)))
        if task is None:  # a searched setting: built here from the study and the sampled values
            task = task_from_settings(self.base, settings, config.get("seed", self.seed), out_dir)
        return {**task, "out_dir": out_dir}


@lru_cache(maxsize=1)
def _trainable_class():
    """The Tune trainable (built on first use: planning a sweep does not import Ray)."""
    from ray import tune

    class RunTrial(tune.Trainable):
        def setup(self, config, ctx: TrialContext = None):
            import torch

            self.ctx = ctx
            torch.set_num_threads(ctx.threads)  # the run's CPUs (train.threads, when set, wins in train.run)
            self._begin(config)

        def _begin(self, config: dict) -> None:
            """Ready a trial; its run starts at the first step(). Tune may set an actor up for one trial and
            hand it another (reuse_actors), so nothing runs before Tune asks this actor for results."""
            self.events, self.answers, self.waiting, self.last_epoch = queue.Queue(), queue.Queue(), False, 0.0
            self.last_result = {name: None for name in REPORTED}
            self.thread = threading.Thread(target=self._work, args=(dict(config),), name="cnnlab-run", daemon=True)

        def _work(self, config: dict) -> None:
            try:
                row = run_in_scratch(self.ctx, config, self)
            except BaseException as e:  # noqa: BLE001 - the driver must hear of any end
                self.events.put(("error", f"{type(e).__name__}: {e}"))
                return
            self.events.put(("done", row))

        def on_eval(self, row: dict) -> str | None:  # the tracker seam, in the run's thread
            self.shipper.ship()  # files first: a trial ended right after its report still left its curve here
            self.last_epoch = row.get("epoch") or 0.0
            self.events.put(("eval", row))
            return self.answers.get()

        def step(self):
            if not self.thread.is_alive() and self.thread.ident is None:
                self.thread.start()
            if self.waiting:  # Tune asks for more: the run goes on past its last evaluation point
                self.waiting = False
                self.answers.put(None)
            kind, payload = self.events.get()
            if kind == "eval":
                self.waiting = True
                self.last_result = {name: payload.get(field_) for name, field_ in REPORTED.items()}
                return self.last_result
            if kind == "error":
                raise RuntimeError(payload)
            # the last evaluation point again (searchers read the metric from a trial's final result)
            return {**self.last_result, "status": payload["status"],
                    "test.accuracy": (payload.get("test") or {}).get("accuracy"), "done": True}

        def _end(self) -> None:
            """Stopped by Tune (a scheduler): the run ends as pruned, and finishes here. At its last
            evaluation point (ASHA stops every trial that reaches max_t) it is simply done."""
            if self.thread.is_alive():  # at an evaluation point, or (should Tune stop it mid-step) at its next
                self.waiting = False
                last = self.last_epoch >= getattr(self, "planned_epochs", math.inf) - 1e-9
                self.answers.put(None if last else Status.PRUNED.value)
                self.thread.join()

        def cleanup(self):
            self._end()

        def save_checkpoint(self, checkpoint_dir):  # the run's checkpoints are its own last.pt / best.pt
            return {}

        def load_checkpoint(self, checkpoint):
            pass

        def reset_config(self, new_config):
            self._end()
            self._begin(new_config)
            return True

    return RunTrial


def run_in_scratch(ctx: TrialContext, config: dict, trial) -> dict:
    """Run one trial's run in this node's scratch folder, shipping its files to the driver's node; the row
    goes to the sink too. ``trial.on_eval`` is the tracker's step (it ships, reports and waits)."""
    import ray

    local_out = scratch_root() / ctx.scratch / uuid.uuid4().hex[:12]  # one folder per execution, never shared
    task = ctx.task_for(config, str(local_out))
    local = local_out / task["run_dir"]
    shutil.rmtree(local, ignore_errors=True)  # an older copy on this node is stale: the driver's is the truth
    if task["resume"]:
        for rel, data in ray.get(ctx.sink.read.remote(task["run_dir"])).items():
            (local / rel).parent.mkdir(parents=True, exist_ok=True)
            (local / rel).write_bytes(data)
    trial.shipper = _Shipper(ctx.sink, local, task["run_dir"])
    trial.planned_epochs = task["config"]["train"].get("epochs") or math.inf
    row = execute_task(task, trackers=(_Reporter(trial),), record=False)
    trial.shipper.ship()
    ray.get(ctx.sink.put_row.remote(row))
    return row


class _Reporter:
    """The tracker a trial gives train.run: each evaluation point goes to Tune, whose answer may prune the run."""

    def __init__(self, trial):
        self.trial = trial

    def on_eval(self, row: dict) -> str | None:
        return self.trial.on_eval(row)

    def on_finish(self, summary: dict) -> None:
        pass

    def close(self) -> None:
        pass
