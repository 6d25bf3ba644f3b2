"""Running a sweep: its plan → run folders and ``results.jsonl``, resumable, one sweep command at a time.

Re-running a sweep skips finished runs, resumes interrupted ones from ``last.pt`` and re-runs
failed ones (:func:`_state`). Runs execute one after another in this process or on ``workers``
spawned processes (:mod:`cnnlab.sweeps.local`; each writes its own row to ``results.jsonl``), or as
Ray Tune trials (:mod:`cnnlab.sweeps.tune`: the driver writes their rows).

The results file is append-only: a re-run of a failed run appends a new row, and
readers (:func:`cnnlab.reporting.results.load_results`) keep the last row per ``run_id``.
Rows are appended through :func:`cnnlab.runs.append_jsonl` (exclusive ``flock``,
one ``O_APPEND`` write), so concurrent writers (workers) never
interleave or lose lines. Each run is finished as every run is (:mod:`cnnlab.lifecycle`):
the doctor's findings, ``curves.png`` and the uploads (the runs' report.html pages are built
by ``cnnlab report SWEEP_DIR``).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from cnnlab import runs
from cnnlab.config.load import anchor_paths, build_config
from cnnlab.config.schema import ConfigError, check_name
from cnnlab.reporting.results import PLAN, RESULTS, append_row, at_chance, load_results, num_classes, row_from_summary, warn
from cnnlab.runs import FINAL_STATUSES, Status, read_summary
from cnnlab.sweeps import local
from cnnlab.sweeps.plan import PlannedRun, Sweep, check_resources, describe, load_sweep, same_as_default_warning
SWEEP_LOCK = ".sweep.lock"  # in the sweep folder: one sweep command writes it at a time
# ----------------------------------------------------------------------------- running one run


def _state(out: Path, run: PlannedRun, rows: dict[str, dict]) -> str:
    """done | recover (finished, row missing or naming fewer settings) | resume (last.pt) | rerun (leftovers) | new."""
    run_dir = out / run.run_dir
    summary = read_summary(run_dir)
    if summary and summary.get("status") in FINAL_STATUSES and summary.get("seed") == run.seed:
        row = rows.get(run.run_id)
        # A row written by a sweep file that varied fewer keys (a shortened copy) is rewritten naming them all.
        named = row is not None and set(run.settings) <= set(row.get("settings") or {})
        return "done" if named and row.get("status") == summary["status"] else "recover"
    if (run_dir / "last.pt").exists():
        return "resume"
    if run_dir.exists() and any(p.name != runs.LOCK_NAME for p in run_dir.iterdir()):
        return "rerun"
    return "new"


def _ray_job(sweep: Sweep, tasks: list[dict], out: Path, workers: int, address: str | None):
    from cnnlab.sweeps.tune import RayJob

    configs = [r.config for r in sweep.runs] or [build_config(sweep.base)]
    return RayJob(out=out.resolve(), tasks=tasks, workers=workers, address=address, resources=sweep.resources,
                  scheduler=sweep.scheduler, search=sweep.search, space=sweep.space, base=sweep.base, seed=sweep.seed,
                  devices=tuple(sorted({c.train.device for c in configs})),
                  epochs=max(c.train.epochs for c in configs))


def _import_ray():
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("the ray executor needs Ray Tune, which is not installed: pip install cnnlab[ray]") from None
    return ray, tune


# ----------------------------------------------------------------------------- the sweep


def run_sweep(sweep_path: str | Path, out_dir: str | Path | None = None, workers: int = 1,
              executor: str = "local", address: str | None = None, dry_run: bool = False,
              resources: dict | None = None, wait: bool = False) -> list[dict]:
    """Run (or with ``dry_run`` only plan) a sweep file; returns one row per planned run.

    Output goes to ``out_dir`` (default ``sweeps/<sweep file stem>``): ``runs/<run_id>/``,
    ``results.jsonl``, ``plan.json`` and a copy of the sweep file. Runs already finished are
    skipped; interrupted ones resume from ``last.pt``; failed ones run again. A dry run
    returns the plan (each row's ``state`` says what a real run would do) and writes nothing.
    One sweep command writes a sweep folder at a time (a lock on ``.sweep.lock``): another one
    refuses, naming the running command, or with ``wait`` waits for it to end.
    """
    if executor not in ("local", "ray"):
        raise ConfigError(f"executor must be 'local' or 'ray', got {executor!r}")
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers!r}")
    resources = {k: v for k, v in (resources or {}).items() if v is not None}
    if executor == "local" and (address or resources):
        raise ConfigError("--address, --cpus-per-run and --gpus-per-run apply to the ray executor only "
                          "(add --executor ray)")
    resources = check_resources(resources, "--cpus-per-run / --gpus-per-run")
    sweep = load_sweep(sweep_path)  # validates every config before anything is written
    for entry in sweep.same_as_default:
        warn(same_as_default_warning(sweep.source, entry))
    if executor == "local" and sweep.search:
        raise ConfigError(f"{sweep.source}: search: is Ray Tune's; run the sweep with --executor ray (on this machine, "
                          "without --address, Ray starts a private instance)")
    if executor == "local" and sweep.scheduler:  # one file serves both executors: here every run goes to its end
        warn(f"{sweep.source}: scheduler: {sweep.scheduler['name']} is Ray Tune's; the local executor runs every run "
             "to its end without pruning (--executor ray prunes)")
    sweep.resources = {**sweep.resources, **resources}  # the command line wins over the sweep file
    if out_dir is None:  # the default folder is built from the file name: it must stay inside sweeps/
        check_name(sweep.name, "the sweep file name (the default --out is sweeps/<file stem>)", str(sweep_path))
    out = Path(out_dir) if out_dir is not None else Path("sweeps") / sweep.name
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder; choose another --out")
    if dry_run:
        return _dry_run(sweep, out)
    if address is not None and not address.strip():
        raise ConfigError("--address is empty; give the HOST:PORT of a Ray cluster's head, or leave it out")
    if executor == "ray":
        _import_ray()  # fail before writing anything when Ray is missing
        from cnnlab.sweeps.tune import probe

        probe(address or os.environ.get("RAY_ADDRESS"))  # an address nobody answers: said now, in seconds
    with runs.FolderLock(out, SWEEP_LOCK, what="sweep folder", wait=wait):
        if executor != "ray":
            return _run_locked(sweep, sweep_path, out, workers, executor, address)
        from cnnlab.sweeps import tune as sweep_ray  # joined (or started) before anything is written: its errors cost nothing

        started = sweep_ray.connect(address)
        try:
            # resources no node can hold: said before anything is written
            sweep_ray.cluster_resources(sweep.resources, _ray_job(sweep, [], out, workers, address).devices)
            return _run_locked(sweep, sweep_path, out, workers, executor, address)
        finally:
            if started:
                sweep_ray.disconnect()


def _dry_run(sweep: Sweep, out: Path) -> list[dict]:
    rows = {r["run_id"]: r for r in load_results(out)}
    if sweep.search:
        print(f"sweep {sweep.name}: {sweep.search['name']} search of {sweep.search['trials']} trials on "
              f"{sweep.search['metric']} ({len(rows)} rows already in {out}) over:", flush=True)
        for key, spec in sweep.space.items():
            print(f"  {key}: {json.dumps(spec)}", flush=True)
        return []
    states = {r.run_id: _state(out, r, rows) for r in sweep.runs}
    print(format_plan(sweep, states, out), flush=True)
    return [{"run_id": r.run_id, "settings": r.settings, "seed": r.seed, "run_dir": r.run_dir,
             "state": states[r.run_id],
             "status": rows[r.run_id]["status"] if states[r.run_id] == "done" else Status.PLANNED}
            for r in sweep.runs]


def _run_locked(sweep: Sweep, sweep_path: str | Path, out: Path, workers: int, executor: str,
                address: str | None) -> list[dict]:
    """run_sweep's work, with the sweep folder's lock held (the states are read under it)."""
    rows = {r["run_id"]: r for r in load_results(out)}
    states = {r.run_id: _state(out, r, rows) for r in sweep.runs}
    runs.write_text(out / "sweep.yaml", Path(sweep_path).read_text())
    runs.write_json(out / PLAN, sweep.to_dict())
    for r in sweep.runs:
        if states[r.run_id] == "recover":  # finished, but its row was lost: rebuild it from summary.json
            append_row(out / RESULTS, row_from_summary(r.info(), read_summary(out / r.run_dir)))

    todo = [r for r in sweep.runs if states[r.run_id] in ("new", "resume", "rerun")]
    if sweep.search:
        print(f"sweep {sweep.name}: {sweep.search['name']} search of {sweep.search['trials']} trials "
              f"({len(rows)} already done) → {out}", flush=True)
    else:
        print(f"sweep {sweep.name}: {len(sweep.runs)} runs ({len(sweep.runs) - len(todo)} already done, "
              f"{len(todo)} to run) → {out}" + (f" [{executor}, {workers} workers]" if workers > 1 else ""), flush=True)
    quiet = workers > 1 or executor == "ray"  # progress bars of parallel runs would garble the terminal
    tasks = [_task(r, out, states[r.run_id], quiet, Path(sweep_path).parent) for r in todo]
    if executor == "local" and (mixed := mixed_threads(rows, tasks, workers)):
        warn(mixed)
    for task in tasks:  # which sweep run each is: trackers group the sweep's runs, named by their settings
        task["config"]["train"]["sweep"] = {"name": sweep.name, "run_id": task["run_id"], "settings": task["settings"]}
    done = [0]
    total = max(0, sweep.search["trials"] - len(rows)) if sweep.search else len(tasks)

    shown_base = sweep.base_settings if sweep.ofat else None  # OFAT progress lines name only the factor that differs

    def on_start(task: dict) -> None:
        print(f"[{done[0] + 1}/{len(tasks)}] {task['run_id']} {describe_run(task['settings'], shown_base)} "
              f"seed={task['seed']}"
              + (" (resuming)" if task["resume"] else ""), flush=True)

    kinds, finished = {task["run_id"]: _run_kind(task) for task in tasks}, []  # for the time-left estimate
    ended: list[float] = []  # when each run ended (s since the start): when the runs in progress began
    parallel = 1 if not (executor == "ray" or (tasks and workers > 1)) else workers

    def on_row(row: dict) -> None:
        done[0] += 1
        classes = num_classes(out, [row], default=0) or None
        finished.append((*kinds.pop(row["run_id"], (None, None)), row.get("time_s")))
        left = [*kinds.values(), *[(None, None)] * (total - done[0] - len(kinds))]  # a search's trials: unknown
        ended.append(time.perf_counter() - t0)
        print(f"[{done[0]}/{total}] {format_row(row, shown_base, classes)}"
              f"{eta(finished, left, ended[-1], parallel, ended)}", flush=True)

    t0 = time.perf_counter()
    try:
        if (tasks or sweep.search) and executor == "ray":
            from cnnlab.sweeps import tune as sweep_ray  # here: planning and local sweeps do not import Ray

            sweep_ray.run_job(_ray_job(sweep, tasks, out, workers, address), on_row)
        elif tasks and workers > 1:
            local.run_processes(tasks, workers, on_row)
        else:
            local.run_inline(tasks, on_row, on_start)
    except KeyboardInterrupt:
        print(f"sweep interrupted: run the same command again to resume ({out})", flush=True)
    if sweep.search:  # the sampled runs are the plan now (compare and report read it)
        runs.write_json(out / PLAN, {**sweep.to_dict(), "runs": [
            {k: r[k] for k in ("run_id", "settings", "seed", "run_dir")} for r in load_results(out, log=None)]})
    result = planned_rows(sweep, out)
    counts: dict[str, int] = {}
    for r in result:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"sweep {sweep.name} done in {time.perf_counter() - t0:.1f} s: "
          + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
          + f"\nresults: {out / RESULTS}; table: cnnlab compare {out} --by {_compare_hint(sweep)}", flush=True)
    return result


def planned_threads(task: dict, workers: int) -> int | None:
    """The CPU threads a local run of ``task`` will compute with (None for a GPU run): its train.threads, else
    a worker's share of the cores (``workers`` > 1), else this process's torch thread count."""
    train = task["config"]["train"]
    if train.get("device") not in ("cpu", "auto"):
        return None
    from cnnlab.training.runtime import visible_gpus  # here: planning a sweep does not import torch

    if train.get("device") == "auto" and visible_gpus():
        return None
    if train.get("threads"):
        return int(train["threads"])
    if workers > 1:
        return max(1, local.cores() // workers)
    import torch

    return torch.get_num_threads()


def mixed_threads(rows: dict[str, dict], tasks: list[dict], workers: int) -> str | None:
    """A warning when the sweep's finished CPU runs were trained with another thread count than the runs to go
    will use: CPU results depend on it, so the results table would mix rows made both ways. None when they agree."""
    made = [r["threads"] for r in rows.values() if isinstance(r.get("threads"), int)]
    planned = [t for t in (planned_threads(task, workers) for task in tasks) if t is not None]
    earlier, now = sorted(set(made)), sorted(set(planned))
    if not earlier or not now or (earlier == now and len(now) == 1):
        return None
    cores = local.cores()
    match = [w for w in range(2, cores + 1) if cores // w == earlier[0]]
    how = (f"run with --workers {match[0]}" if match else "run one at a time (no --workers)" if workers > 1
           else "run into a new --out")
    return (f"{len(made)} runs in results.jsonl were trained with {' or '.join(map(str, earlier))} CPU threads, and "
            f"the {len(planned)} to run now will use {' or '.join(map(str, now))} "
            f"({'--workers ' + str(workers) if workers > 1 else 'one at a time'} on {cores} cores): on a CPU, "
            f"results depend on the thread count (sums are split differently), so the table would mix rows made "
            f"both ways. To match the earlier rows, {how}; each row records its thread count (threads).")


def eta(done: list[tuple], left: list[tuple], elapsed: float, workers: int = 1,
        ended: list[float] | None = None) -> str:
    """`` (12.3 s elapsed, about 1 min 5 s left)``. ``done``: (base, model, seconds) of each run finished so far
    (seconds None when unknown); ``left``: (base, model) of each run to go. Bases can differ in cost many times over
    (an MLP beside a LeNet), so each run to go is expected to take the mean of the finished runs of its base and
    model, else of its base, else of its model, else of all. One run at a time, their sum is scaled by the elapsed
    time over the finished runs' seconds (the time between runs). With ``workers`` in parallel (``ended``: when each
    finished run ended), :func:`_parallel_left`: the runs in progress are partly done, which matters most on the
    first runs."""
    if not left or not done:
        return f" ({elapsed:.1f} s elapsed)"
    timed = [(b, m, s) for b, m, s in done if s is not None and s > 0]
    if not timed:  # no finished run says how long it took: all runs alike
        left_s = elapsed / len(done) * len(left)
    else:
        expected = [_expected_seconds(timed, base, model) for base, model in left]
        left_s = (_parallel_left(expected, elapsed, workers, ended or [elapsed]) if workers > 1
                  else elapsed * sum(expected) / sum(s for *_, s in timed))
    text = f"{left_s:.0f} s" if left_s < 90 else f"{left_s // 60:.0f} min {left_s % 60:.0f} s"
    return f" ({elapsed:.1f} s elapsed, about {text} left)"


def _parallel_left(expected: list[float], elapsed: float, workers: int, ended: list[float]) -> float:
    """Seconds left for runs of ``expected`` seconds on ``workers`` slots, where each run that ended (at the times
    ``ended``) freed its slot for the next run: the runs in progress began at the latest of the runs' starts and
    have that much less to go; the runs waiting then take the slot that frees first. Scaling by the elapsed time
    alone counts a run in progress as not begun: with 2 workers, the first run to end said twice the time left."""
    busy = min(workers, len(expected))
    started = sorted([0.0] * workers + list(ended))[:len(ended) + len(expected)]  # a slot starts a run if one is left
    starts = started[-busy:]
    slots = [max(0.0, e - (elapsed - t)) for e, t in zip(expected, starts)] + [0.0] * (workers - busy)
    for e in expected[busy:]:
        slots.sort()
        slots[0] += e
    return max(slots)


def _expected_seconds(timed: list[tuple], base, model) -> float:
    """The mean seconds of the finished runs most like (base, model): both the same, else the base, else the model,
    else any."""
    for alike in ((lambda b, m: (b, m) == (base, model)), (lambda b, m: b == base), (lambda b, m: m == model),
                  (lambda b, m: True)):
        if seconds := [s for b, m, s in timed if alike(b, m)]:
            return sum(seconds) / len(seconds)
    return 0.0  # no finished run timed (not reached: eta asks only when one is)


def _run_kind(task: dict) -> tuple[str, str]:
    """A sweep task's (base, model): runs alike in cost (:func:`eta`). The base is the study it was built from."""
    return task["settings"].get("base", task["config"].get("name")), task["config"]["model"]["name"]


def _compare_hint(sweep: Sweep) -> str:
    # One factor per table in an OFAT sweep (each named, so none is missed); a grid's table has them all.
    if sweep.ofat and len(sweep.factors) > 1:
        return (f"{sweep.factors[0][0]}  (one table per factor: --by "
                + " | ".join(f[0] for f in sweep.factors) + ")")
    return ",".join(sweep.factors[0] if sweep.ofat and sweep.factors else sweep.keys) or "base"


def planned_rows(sweep: Sweep, out: Path) -> list[dict]:
    """The results row of every planned run, in plan order (status 'pending' where none exists);
    a search's rows in the order they were written."""
    rows = {r["run_id"]: r for r in load_results(out)}
    if sweep.search:
        return list(rows.values())
    return [rows.get(r.run_id) or {**r.info(), "status": Status.PENDING} for r in sweep.runs]


def _task(r: PlannedRun, out: Path, state: str, quiet: bool, folder: Path = Path(".")) -> dict:
    # the bases' paths are absolute already; an axis's relative data.root is the sweep file's (``folder``)
    config = anchor_paths(r.config.to_dict(), folder)
    if quiet:
        config["train"]["progress"] = False  # display only: the run id (hash) was taken before
    return {**r.info(), "out_dir": str(out.resolve()), "config": config,
            "resume": state == "resume", "force": state == "rerun"}


def describe_run(settings: dict, base: dict | None = None) -> str:
    """A run's settings as ``key=value, ...``; given the ``base`` case's settings (a one-factor-at-a-time
    sweep), only the values that differ from it, so a line names the factor the run varies."""
    if base is None:
        return describe(settings)
    return describe({k: v for k, v in settings.items() if k not in base or base[k] != v})


def format_row(row: dict, base: dict | None = None, classes: int | None = None) -> str:
    """A finished run's progress line (``base``: see describe_run). Given the run's class count, a test
    accuracy at chance level is said as such, so a collapsed run does not read as one more result."""
    acc = (row.get("test") or {}).get("accuracy")
    text = f"{row['run_id']} {describe_run(row['settings'], base)} seed={row['seed']}: {row['status']}"
    if acc is not None:
        text += f" test accuracy {acc:.4f}"
        if row["status"] == Status.PRUNED:  # cut short on purpose: its score says nothing about learning
            epoch = (row.get("best") or {}).get("epoch")
            text += (" (stopped by the sweep's scheduler" + (f" at epoch {epoch:g}" if isinstance(epoch, (int, float))
                                                             else "") + ": a partial score, not a result)")
        elif at_chance(acc, classes):
            text += " (chance level: the network did not learn)"
    if row.get("time_s") is not None:
        text += f" ({row['time_s']:.1f} s)"
    if row.get("error") and row["status"] != Status.COMPLETED:
        text += f": {row['error']}"
    return text


def format_plan(sweep: Sweep, states: dict[str, str], out: Path) -> str:
    """The planned runs as a text table (what --dry-run prints)."""
    n_settings = len({json.dumps(r.settings, sort_keys=True) for r in sweep.runs})
    n_seeds = len({r.seed for r in sweep.runs})
    mode = "one factor at a time" if sweep.ofat else "grid"
    head = ["#", "run_id", "state", "seed", *sweep.keys]
    body = [[str(i + 1), r.run_id, states.get(r.run_id, "new"), str(r.seed),
             *(json.dumps(r.settings[k]) if not isinstance(r.settings[k], str) else r.settings[k]
               for k in sweep.keys)]
            for i, r in enumerate(sweep.runs)]
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]
    lines = [f"sweep {sweep.name} ({mode}): {n_settings} settings × {n_seeds} seeds → {len(sweep.runs)} runs "
             f"in {out}"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in [head, *body]]
    by_state: dict[str, int] = {}
    for s in states.values():
        by_state[s] = by_state.get(s, 0) + 1
    lines.append("states: " + ", ".join(f"{n} {s}" for s, n in sorted(by_state.items())))
    return "\n".join(lines)
