"""One sweep run, as plain data that crosses process and machine boundaries: its id and its execution.

The lower layer under :mod:`cnnlab.sweeps.run` (planning, local executors) and :mod:`cnnlab.sweeps.tune`
(Ray Tune): both import this module and neither imports the other's internals, so the layers stay
one-way. A *task* is a dict (out_dir, run_id, run_dir, settings, seed, config, resume, force).
"""
from __future__ import annotations

import hashlib
import json
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from cnnlab import runs
from cnnlab.config.schema import Config, apply_overrides, flatten
from cnnlab.config.load import build_config
from cnnlab.reporting.results import RESULTS, append_row, row_from_summary
from cnnlab.runs import Status, read_summary

RUN_LOCK_WAIT_S = 30  # how long a run waits for another process to let go of its run folder
ID_LENGTH = 10  # hex digits of the run id: collisions stay negligible for millions of runs


@lru_cache(maxsize=1)
def _defaults() -> dict[str, Any]:
    return flatten(Config().to_dict(), keep_empty=False)


def run_id(cfg: Config) -> str:
    """A short hash of the config's non-default values and seed: equal configs share an id.

    Only values that differ from the defaults enter the hash, so a default spelled out
    (``optim.name: adam``) and the same default left implicit give the same run, and a new
    config field added later with a default does not change the ids of existing runs. Where a run is
    tracked (``train.mlflow``) and which sweep names it (``train.sweep``) are not which run it is: turning
    MLflow on keeps a sweep's finished runs.
    """
    defaults = _defaults()
    resolved = {k: v for k, v in flatten(cfg.to_dict(), keep_empty=False).items()
                if k not in ("seed", "train.mlflow") and not k.startswith("train.sweep.")
                and defaults.get(k, object()) != v}
    text = json.dumps({"config": resolved, "seed": cfg.seed}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:ID_LENGTH]


class _FileLog:
    """train.run's log, appended to the run folder's train.log (opened on first use, after
    train.run has prepared the folder, so the file does not count as a leftover)."""

    def __init__(self, path: Path):
        self.path, self.f = path, None

    def __call__(self, message: str) -> None:
        if self.f is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(self.path, "a")
        self.f.write(f"{message}\n")
        self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


def execute_task(task: dict, trackers: tuple = (), record: bool = True) -> dict:
    """Run one planned run to an end state, append its row to results.jsonl (``record``), return the row.

    ``task`` is plain data (so it crosses process boundaries): out_dir, run_id, run_dir,
    settings, seed, config (dict), resume, force. A crash is recorded as ``failed`` with its
    message rather than raised, so the sweep goes on; KeyboardInterrupt is not caught.
    ``trackers`` watch the run (:mod:`cnnlab.training.tracking`); a Ray trial passes its reporter and
    ``record=False``, since there the driver alone writes results.jsonl.
    """
    from cnnlab.lifecycle import train_and_finish  # here, not at the top: planning a sweep needs no training

    run_dir = Path(task["out_dir"]) / task["run_dir"]
    log = _FileLog(run_dir / "train.log")
    t0 = time.perf_counter()
    try:
        cfg = build_config(task["config"])
        # The sweep folder's lock keeps other sweeps out; a run folder can still be held by a worker of a
        # killed sweep that is ending, or by `cnnlab train --resume`: wait a little for it, then refuse.
        runs.FolderLock(run_dir, wait=RUN_LOCK_WAIT_S).acquire_and_release()
        # report.html is skipped here: `cnnlab report SWEEP_DIR` builds the runs' reports it links to
        summary = train_and_finish(cfg, run_dir, resume=task["resume"], force=task["force"], log=log, html=False,
                                   trackers=tuple(trackers))  # finished also when it fails (cnnlab.lifecycle)
        row = row_from_summary(task, summary)
    except Exception as e:  # noqa: BLE001 - recorded in the row; one bad run must not end the sweep
        summary = read_summary(run_dir) or {}  # train.run leaves one (status failed) when it got far enough
        summary["status"] = Status.FAILED
        row = row_from_summary(task, summary, error=f"{type(e).__name__}: {e}", time_s=time.perf_counter() - t0)
    finally:
        log.close()
    if record:
        append_row(Path(task["out_dir"]) / RESULTS, row)
    return row




def task_from_settings(base: dict, settings: dict, seed: int, out_dir: str) -> dict:
    """The task of a run a searcher proposed: the study mapping ``base`` with ``settings`` (dotted keys)
    applied, built and validated like a planned run, quiet (no progress bars), with its hash as run id."""

    settings = {k: v.item() if hasattr(v, "item") else v for k, v in settings.items()}  # numpy scalars → plain
    cfg = build_config(apply_overrides(base, settings)).model_copy(update={"seed": seed})
    rid = run_id(cfg)
    config = cfg.to_dict()
    config["train"]["progress"] = False
    return {"run_id": rid, "settings": settings, "seed": seed, "run_dir": f"runs/{rid}", "out_dir": out_dir,
            "config": config, "resume": False, "force": False}
