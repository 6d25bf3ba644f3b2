"""What a resumed run may change: ``cnnlab train --resume DIR key=value`` continues the same run.

The run's identity is the config saved in its ``last.pt``. A resume compares the config it is
asked to run (the run folder's ``config.yaml``, perhaps edited, plus ``key=value`` overrides)
with that saved config, field by field:

- fields in :data:`RESUMABLE` change how long the run goes on, how often it is scored or how it
  reports, not what one training step does: they are applied, written to ``config.yaml`` and
  recorded (``summary.json``'s ``resumed``: one ``{step, changes: {field: [old, new]}}`` per resume
  that changed something);
- any other difference is refused with a :class:`~cnnlab.config.schema.ConfigError` (exit code 2) that
  names each field with its old and new value, before any data is read.

``train.epochs`` may only grow, and only with a schedule whose shape does not depend on the run's
length (a cosine or one-cycle schedule spans the whole run: extending it would change the
learning rates already used).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from cnnlab import runs
from cnnlab.config.schema import Config, ConfigError, dump_yaml, flatten

if TYPE_CHECKING:  # annotations only
    from cnnlab.training.state import TrainState

RESUMABLE = ("train.epochs", "train.eval_every", "train.eval_batch_size", "train.early_stopping.patience",
             "train.early_stopping.min_delta", "train.threads", "train.progress", "train.tensorboard",
             "train.mlflow", "data.download", "data.max_memory",
             "data.verify")  # where images are kept changes no batch
RESUMABLE_PREFIXES = ("train.sweep.",)  # which sweep a run belongs to (a renamed sweep file) is no training setting
LENGTH_BOUND_SCHEDULES = ("cosine", "onecycle")


def differences(saved: dict, requested: dict) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (saved value, requested value)} for every field that differs."""
    a, b = flatten(saved, keep_empty=False), flatten(requested, keep_empty=False)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


def checkpoint_path(out_dir: Path, choice: str | Path = "last") -> Path:
    """The checkpoint a resume continues from (``--from``): ``last`` (default) or ``best`` of the run in
    ``out_dir``, or a checkpoint file's path (one this run wrote: its config is checked as last.pt's is)."""
    path = Path(out_dir) / f"{choice}.pt" if str(choice) in ("last", "best") else Path(choice)
    if not path.is_file():
        what = f"{choice}.pt of {out_dir}" if str(choice) in ("last", "best") else str(path)
        raise ConfigError(f"--from {choice}: no checkpoint file {what}; use --from last, best or the path of a "
                          "checkpoint (.pt) this run wrote")
    return path


def check(cfg: Config, out_dir: Path, checkpoint: Path | None = None) -> dict[str, list]:
    """The changes this resume makes to the run in ``out_dir`` ({field: [old, new]}), continued from
    ``checkpoint`` (default its last.pt); raises ConfigError naming every field that may not change."""
    checkpoint = checkpoint or Path(out_dir) / "last.pt"
    saved = runs.load_checkpoint(checkpoint).get("config")
    if not isinstance(saved, dict):
        raise runs.CheckpointError(f"{checkpoint} holds no config; it is not a cnnlab run checkpoint")
    # Fields added to the schema since the checkpoint was written take their defaults there too.
    saved = _merge(Config().to_dict(), saved)
    diff = differences(saved, cfg.to_dict())
    refused = {k: v for k, v in diff.items() if k not in RESUMABLE and not k.startswith(RESUMABLE_PREFIXES)}
    old_epochs, new_epochs = diff.get("train.epochs", (None, None))
    if new_epochs is not None and new_epochs < old_epochs:
        refused["train.epochs"] = (old_epochs, new_epochs)
    elif new_epochs is not None and cfg.sched.name in LENGTH_BOUND_SCHEDULES:
        refused["train.epochs"] = (old_epochs, new_epochs)
    if refused:
        lines = [f"  {k}: {_show(old)} in the checkpoint, {_show(new)} now" for k, (old, new) in refused.items()]
        why = []
        if "train.epochs" in refused:
            why.append("train.epochs may only grow, and not under sched.name=cosine or onecycle, whose schedule "
                       "spans the whole run")
        raise ConfigError(
            f"--resume {out_dir}: its {checkpoint.name} was trained with other settings; a resume continues the same run, so only "
            f"{', '.join(RESUMABLE)} may change. Refused:\n" + "\n".join(lines)
            + ("\n" + "; ".join(why) if why else "")
            + f"\nPut these fields back in {Path(out_dir) / 'config.yaml'} (or drop the overrides), or start a new "
            "run with --out")
    return {k: [old, new] for k, (old, new) in diff.items()}


def record(s: TrainState, changes: dict[str, list], source: Path | None = None) -> None:
    """After the checkpoint is restored: note the resume in the run's progress (summary.json's
    ``resumed``: its changes, and ``from`` when it continued from another checkpoint than last.pt) and write the
    config it now runs with."""
    other = source is not None and source.resolve() != (s.out_dir / "last.pt").resolve()
    if changes or other:
        s.progress.resumes.append({"step": s.progress.step, "changes": changes,
                                   **({"from": str(source)} if other else {})})
        s.log("resume changes: " + ", ".join(f"{k} {_show(o)} → {_show(n)}" for k, (o, n) in changes.items()))
    runs.write_text(s.out_dir / "config.yaml", dump_yaml(s.cfg))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def _show(v: Any) -> str:
    if isinstance(v, float):
        return format(v, "g")
    return "null" if v is None else repr(v) if isinstance(v, str) else str(v)
