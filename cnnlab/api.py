"""The Python API (``import cnnlab``): train, sweep, compare and load from a notebook or a script.

``cnnlab.train(study, overrides, out)`` runs one study (a YAML path, a dict or a Config)
and finishes its folder for reporting, returning a :class:`Run`; ``cnnlab.sweep`` and
``cnnlab.compare`` do what the commands of the same name do; ``cnnlab.load(run_dir)``
gives the trained model ready to predict (:class:`cnnlab.inference.load.LoadedRun`). Errors are
:class:`~cnnlab.config.schema.ConfigError` (or DataError / CheckpointError) naming the fields
and arguments of these functions, not command-line flags.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab import runs
from cnnlab.config.schema import Config, ConfigError, apply_overrides
from cnnlab.config.load import build_config, load_config
from cnnlab.inference.load import LoadedRun, load_run
from cnnlab.runs import read_metrics, read_summary

Overrides = dict[str, Any] | list[str] | None


@dataclass
class Run:
    """A finished (or stopped) run: its folder and summary, with shortcuts to what is inside."""

    dir: Path
    summary: dict = field(repr=False)

    @property
    def status(self) -> str:
        return self.summary.get("status")

    @property
    def test_accuracy(self) -> float | None:
        return (self.summary.get("test") or {}).get("accuracy")

    @property
    def config(self) -> dict:
        return self.summary.get("config", {})

    @property
    def metrics(self) -> list[dict]:
        """The learning-curve rows of metrics.jsonl."""
        return read_metrics(self.dir)

    def load(self, checkpoint: str = "best.pt", device: str = "cpu") -> LoadedRun:
        return load_run(self.dir, checkpoint, device)

    def __repr__(self) -> str:
        acc = self.test_accuracy
        return f"Run({str(self.dir)!r}, status={self.status!r}" + (f", test_accuracy={acc:.4f})" if acc is not None
                                                                   else ")")


def check_overrides(overrides: Any) -> dict | list:
    """``overrides`` as the API takes them: None, a dict of dotted keys ({"optim.lr": 0.01}) or a list of
    ``"key=value"`` strings; anything else is a ConfigError naming the argument (not an error deep inside)."""
    if overrides is None:
        return {}
    if isinstance(overrides, dict):
        bad = [k for k in overrides if not isinstance(k, str)]
        if bad:
            raise ConfigError(f"overrides: keys must be dotted setting names such as 'optim.lr' (strings), got "
                              f"{bad[0]!r} ({type(bad[0]).__name__})")
        return overrides
    if isinstance(overrides, (list, tuple)) and all(isinstance(o, str) for o in overrides):
        return list(overrides)
    raise ConfigError(f"overrides: expected a dict such as {{'optim.lr': 0.01}} or a list of 'key=value' strings, "
                      f"got {type(overrides).__name__} {overrides!r:.80}")


def check_out(out: Any, what: str = "out") -> Path | None:
    """``out`` as a folder path, or None; a ConfigError naming the argument for anything else (out=123)."""
    if out is None or isinstance(out, (str, Path)):
        return Path(out) if out is not None else None
    raise ConfigError(f"{what}: expected a folder path (str or pathlib.Path), got {type(out).__name__} {out!r:.80}")


def config_of(study: str | Path | dict | Config, overrides: Overrides = None) -> Config:
    """A study (YAML path, nested dict or Config) with dotted overrides ({"optim.lr": 0.01}), validated."""
    overrides = check_overrides(overrides)
    if isinstance(study, (str, Path)):
        return load_config(study, overrides)
    if isinstance(study, Config):
        study = study.to_dict()
    if not isinstance(study, dict):
        raise ConfigError(f"study: expected a path to a YAML file, a dict or a Config, got {type(study).__name__}")
    return build_config(apply_overrides(study, overrides), "study")


def train(study: str | Path | dict | Config, overrides: Overrides = None, out: str | Path | None = None, *,
          resume: bool = False, force: bool = False, report: bool = True, verbose: bool = False,
          callbacks: list | None = None, resume_from: str | Path = "last") -> Run:
    """Train one study into ``out`` (default ``runs/<timestamp>-<name>``); with ``report`` also the
    doctor's findings, curves.png and report.html (``cnnlab.lifecycle``; also after a failure). ``resume=True``
    continues the run in ``out`` (``study`` may then be None: its config.yaml is used) from ``resume_from``: its
    ``"last"`` checkpoint, its ``"best"`` or a checkpoint file's path. ``callbacks``: objects with any of
    ``on_eval(row)`` (each learning-curve point; True or a status stops the run), ``on_finish(summary)`` and
    ``close()`` (:class:`cnnlab.training.tracking.Callback`)."""
    from cnnlab.lifecycle import train_and_finish
    from cnnlab.training.tracking import callbacks_as_trackers

    out = check_out(out)
    trackers = tuple(callbacks_as_trackers(callbacks))
    if resume:
        if out is None:
            raise ConfigError("resume=True needs out=RUN_DIR, the run folder to continue")
        cfg = config_of(study if study is not None else Path(out) / "config.yaml", overrides)
    else:
        cfg = config_of(study, overrides)
    out = Path(out) if out is not None else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}"
    try:  # the one after-run path, as cnnlab train and a sweep take it (cnnlab.lifecycle)
        summary = train_and_finish(cfg, out, resume=resume, force=force, verbose=verbose, finish=report,
                                   trackers=trackers, resume_from=resume_from)
    except (runs.RunExistsError, ConfigError) as e:  # --resume / --from refusals, in this function's words
        raise ConfigError(api_words(str(e))) from None
    return Run(out, summary)


@dataclass
class SweepResult:
    """A sweep folder and its results rows (one per planned run)."""

    dir: Path
    rows: list[dict]

    def compare(self, by: str | list[str] | None = None, metric: str = "test.accuracy") -> str:
        return compare(self.dir, by, metric)


def sweep(sweep_file: str | Path, out: str | Path | None = None, *, workers: int = 1, executor: str = "local",
          address: str | None = None, dry_run: bool = False) -> SweepResult:
    """Run a sweep file (settings × seeds) into ``out`` (default ``sweeps/<name>``)."""
    from cnnlab.sweeps.local import unguarded_script
    from cnnlab.sweeps.plan import load_sweep
    from cnnlab.sweeps.run import run_sweep

    script = unguarded_script() if executor == "local" and isinstance(workers, int) and workers > 1 else None
    if script is not None:
        raise ConfigError(
            f"workers={workers}: cnnlab.sweep is called at the top level of {script}, outside "
            f"'if __name__ == \"__main__\":'. Its worker processes are started by Python's spawn, which imports "
            f"{script} again in each of them, so every worker would start the sweep again and die. Put the call "
            f"under 'if __name__ == \"__main__\":' (the code above it can stay), or use workers=1.")
    try:
        rows = run_sweep(sweep_file, out_dir=out, workers=workers, executor=executor, address=address,
                         dry_run=dry_run)
    except ConfigError as e:
        raise ConfigError(api_words(str(e))) from None
    return SweepResult(Path(out) if out is not None else Path("sweeps") / load_sweep(sweep_file).name, rows)


def compare(sweep_dir: str | Path, by: str | list[str] | None = None, metric: str = "test.accuracy") -> str:
    """The comparison table of a sweep's runs (Markdown; also written as compare.md / compare.csv); ``by``
    None: the keys the sweep varies, or ``base`` (one row pooling the seeds) when it varies none."""
    from cnnlab.reporting.compare import write_compare

    keys = by.split(",") if isinstance(by, str) else list(by or ())
    return write_compare(Path(sweep_dir), by=keys, metric=metric)


def load(run_dir: str | Path, checkpoint: str = "best.pt", device: str = "cpu") -> LoadedRun:
    """A run's trained model ready to use: ``.model``, ``.classes``, ``.input_shape``, ``.transform``,
    ``.predict(images_or_paths)``."""
    return load_run(run_dir, checkpoint, device)


def lr_find(study: str | Path | dict | Config, overrides: Overrides = None, out: str | Path | None = None, *,
            start_lr: float = 1e-7, end_lr: float = 10.0, steps: int = 200, smooth: float = 0.9,
            diverge: float = 4.0, rule: str = "steepest"):
    """The learning-rate range test of a study (:mod:`cnnlab.training.lr_find`): the lr grows geometrically from
    ``start_lr`` to ``end_lr`` over at most ``steps`` steps; returns an LRFind (``.suggestion``, ``.rule``,
    ``.line`` to paste into the study file, ``.lrs`` / ``.losses`` / ``.smoothed``) and writes ``lr_find.json``
    and ``lr_find.png`` into ``out`` (default ``runs/<timestamp>-<name>-lr-find``), nothing else."""
    from cnnlab.reporting import plots
    from cnnlab.training.lr_find import RangeTest
    from cnnlab.training.lr_find import lr_find as range_test

    test = RangeTest(start_lr, end_lr, steps, smooth, diverge, rule).check()  # refused before any data is read
    out, cfg = check_out(out), config_of(study, overrides)
    out = out if out is not None else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.name}-lr-find"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file; lr-find writes lr_find.json and lr_find.png into a folder")
    result = range_test(cfg, out, test, log=lambda *_: None)
    out.mkdir(parents=True, exist_ok=True)
    result.out = str(out)
    runs.write_json(out / "lr_find.json", result.record())
    runs.write_bytes(out / "lr_find.png", plots.png_bytes(plots.lr_find_figure(result.record())))
    return result


def explain(run_dir: str | Path, files: str | Path | list, out: str | Path | None = None, *,
            target: str | None = None, checkpoint: str = "best.pt") -> list[dict]:
    """Grad-CAM heat maps of image files (paths, folders, glob patterns) by a trained run
    (:mod:`cnnlab.inference.explain`): one ``<name>.gradcam.png`` per image in ``out`` (default
    ``RUN_DIR/explain``), for the predicted class or the class named ``target``; returns a row per image (file,
    class, probability, explained, png)."""
    from cnnlab.inference.explain import explain_paths

    out = check_out(out)
    patterns = [str(files)] if isinstance(files, (str, Path)) else [str(f) for f in files]
    run = load_run(run_dir, checkpoint, "cpu")
    out = out if out is not None else run.run_dir / "explain"
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} is a file; explain writes its pictures into a folder")
    rows, _ = explain_paths(run, patterns, out, target)
    return rows


def summary(run_dir: str | Path) -> dict | None:
    """A run folder's summary.json (None when there is none yet)."""
    return read_summary(Path(run_dir))


def api_words(message: str) -> str:
    """A message written for the command line, in this API's terms."""
    for flag, arg in (("--resume", "resume=True"), ("--force", "force=True"), ("--out", "out"), ("--from", "resume_from"),
                      ("--workers", "workers"), ("--address", "address")):
        message = message.replace(flag, arg)
    return message
