"""The training state and its saved form, side by side.

:class:`TrainState` is one run in training: what :mod:`cnnlab.training.loop`'s loop reads and changes, passed around
as one object. :class:`Checkpoint` is what of it ``last.pt`` and ``best.pt`` keep: enough to resume
bit-identically. Every field of :class:`TrainState` is declared here as either saved (:data:`SAVED`: the
checkpoint entry that carries it) or rebuilt on every start from the config and the data
(:data:`REBUILT`); tests/test_state.py fails when a field is in neither, so a new piece of state cannot be
forgotten by the checkpoint silently.

On disk a checkpoint is a plain dict of tensors and builtins (``torch.load(weights_only=True)`` reads it:
an untrusted file never runs code), written atomically by :func:`cnnlab.runs.save_checkpoint`. Its
``format`` is :data:`CHECKPOINT_FORMAT`; files written before the format had a number read as format 1
(they lack ``scaler``, which a resume then starts afresh).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from cnnlab import runs
from cnnlab.runs import CheckpointError, does_not_fit

if TYPE_CHECKING:  # annotations only: the state module imports no part of the trainer
    from cnnlab.config.schema import Config
    from cnnlab.training.scoring import Evaluator
    from cnnlab.training.optim import Schedule
    from cnnlab.training.runtime import EMA, Compute

CHECKPOINT_FORMAT = 2  # 1: no "format" entry, no "scaler"; 2: both


@dataclass
class Progress:
    """What a checkpoint must carry besides the weights to resume exactly."""

    step: int = 0
    best_value: float | None = None
    best_step: int = 0
    best_epoch: float = 0.0
    best_val_accuracy: float | None = None
    best_val_loss: float | None = None
    evals_since_best: int = 0
    train_seconds: float = 0.0  # without compile_seconds (a compiled step's first steps' extra time)
    compile_seconds: float = 0.0
    curve_eval_seconds: float = 0.0  # evaluation points (val scoring, checkpoints): neither train nor final
    epoch_seconds: list = field(default_factory=list)
    # running training loss / accuracy since the last evaluation (a stop between evaluations resumes the same point)
    accum_loss: float = 0.0
    accum_correct: int = 0
    accum_seen: int = 0
    resumes: list = field(default_factory=list)  # summary.json's "resumed": [{step, changes}] (cnnlab.training.resuming)


@dataclass
class TrainState:
    """One run in training: what the loop reads and changes, passed around as one object."""

    cfg: Config
    out_dir: Path
    device: torch.device
    splits: Any  # the data splits (uint8 images on the device)
    model: nn.Module  # the whole network: its state_dict is the checkpoint
    net: nn.Module  # maps the loop's inputs to outputs: the model, or the head alone
    inputs: Any  # the loop's inputs: the splits, or a frozen backbone's cached features of them
    train_pre: Callable  # fn(stored batch, generator) -> augmented, normalised batch
    channels_last: bool
    compute: Compute  # the precision and memory format used, and why (summary.json)
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    loss_fn: Callable
    scaler: torch.amp.GradScaler | None
    ema: EMA | None
    aug_gen: torch.Generator  # the augmentation's random numbers (checkpointed)
    mixer: Any  # data.augment.mixup / cutmix (cnnlab.data.augment.Mixer), or None; draws from aug_gen
    evaluator: Evaluator
    scored: nn.Module  # what evaluation scores (the EMA, the model, or the head on cached features)
    eval_inputs: Any  # the splits evaluation scores on: images, or cached features
    steps_per_epoch: int
    total_steps: int
    log: Callable
    progress: Progress = field(default_factory=Progress)  # step, best-so-far, timing, running loss
    history: list = field(default_factory=list)  # the metrics.jsonl rows
    model_info: dict = field(default_factory=dict)
    preprocess: dict = field(default_factory=dict)  # how an image becomes the model's input (for predict/export)
    warnings: list = field(default_factory=list)
    data_seconds: float = 0.0
    t_start: float = field(default_factory=time.perf_counter)
    t_mark: float = 0.0  # start of the training time not yet added to progress.train_seconds
    t_loop: float = 0.0  # when this session's training loop began (set-up: the time before it, less the data's)
    trackers: list = field(default_factory=list)  # cnnlab.training.tracking: TensorBoard, a Ray Tune reporter, ...
    loss_sum: torch.Tensor | None = None  # training loss summed since the last evaluation (on the device:
    correct: torch.Tensor | None = None  # no host sync per step), correct predictions and images seen
    seen: int = 0
    train_step: Any = None  # cnnlab.training.step.Step: forward, loss, backward, update, EMA, running sums
    drop_last: bool = False  # each epoch's short last batch dropped (static shapes for a compiled step)
    tf32: dict = field(default_factory=dict)  # runtime.tf32_flags' decision
    stopped_by: str | None = None  # which tracker or callback stopped the run, and where (summary.json's error)


# TrainState field -> the Checkpoint entry that carries it.
SAVED = {
    "cfg": "config", "model": "model", "optimizer": "optimizer", "schedule": "scheduler", "ema": "ema",
    "scaler": "scaler", "aug_gen": "rng", "progress": "progress", "preprocess": "preprocess",
    "train_step": "lookahead",  # of the step, only train.lookahead's slow copy is state; the rest is built
}
# Rebuilt from the config, the data and the run folder on every start (a resume included), or measured anew.
# loss_sum / correct / seen restart from progress.accum_*; history from metrics.jsonl.
REBUILT = {
    "out_dir", "device", "splits", "net", "inputs", "train_pre", "channels_last", "compute", "loss_fn",
    "evaluator", "scored", "eval_inputs", "steps_per_epoch", "total_steps", "log", "history", "model_info",
    "warnings", "data_seconds", "t_start", "t_mark", "t_loop", "trackers", "loss_sum", "correct", "seen",
    "drop_last", "tf32", "mixer", "stopped_by",
}


@dataclass
class Checkpoint:
    """``last.pt`` / ``best.pt``: the saved form of a :class:`TrainState` (see :data:`SAVED`)."""

    model: dict
    optimizer: dict
    scheduler: dict
    progress: dict  # Progress's fields
    rng: dict  # {"torch": CPU generator state, "augment": the augmentation generator's, "cuda": [per GPU]}
    config: dict  # Config.to_dict(): the run's settings (the checkpoint alone rebuilds the network)
    preprocess: dict  # how an image becomes the model's input (cnnlab.data.augment.preprocess_record)
    ema: dict = field(default_factory=dict)  # the EMA's state dict, or {} without train.ema
    lookahead: dict = field(default_factory=dict)  # train.lookahead's slow copy, or {}
    scaler: dict = field(default_factory=dict)  # fp16's loss scale and growth count, or {}
    format: int = CHECKPOINT_FORMAT

    REQUIRED = ("model", "optimizer", "scheduler", "progress", "rng", "config")

    def to_dict(self) -> dict:
        """What ``torch.save`` writes; ``step`` repeats ``progress["step"]`` for readers of format 1."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "step": self.progress.get("step", 0)}

    @classmethod
    def from_dict(cls, state: Any, path: Path | str) -> "Checkpoint":
        """A loaded ``last.pt``/``best.pt`` of any format so far; CheckpointError naming ``path`` otherwise."""
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} is not a cnnlab run checkpoint (it holds a {type(state).__name__}, "
                                  "not a dict); --resume needs the last.pt a run wrote")
        missing = [k for k in cls.REQUIRED if k not in state]
        if missing:
            raise CheckpointError(f"{path} is not a cnnlab run checkpoint (it has no {', '.join(missing)}); "
                                  "--resume needs the last.pt a run wrote")
        fmt = state.get("format", 1)
        if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path} has checkpoint format {fmt!r}, newer than this cnnlab reads "
                                  f"({CHECKPOINT_FORMAT}); upgrade cnnlab (pip install -U cnnlab)")
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known} | {"format": fmt})

    @classmethod
    def load(cls, path: Path | str, map_location: str | torch.device = "cpu") -> "Checkpoint":
        """Read ``path`` safely (:func:`cnnlab.runs.load_checkpoint`: no code runs, CRCs checked)."""
        return cls.from_dict(runs.load_checkpoint(Path(path), map_location=map_location), path)

    def save(self, path: Path | str) -> None:
        """Write atomically: a crash or a kill leaves the previous file whole."""
        runs.save_checkpoint(Path(path), self.to_dict())

    @classmethod
    def of(cls, s: TrainState) -> "Checkpoint":
        """The checkpoint of the trainer's state now."""
        look = lookahead_of(s)
        return cls(
            model=s.model.state_dict(), optimizer=s.optimizer.state_dict(), scheduler=s.schedule.state_dict(),
            progress=dict(vars(s.progress)),
            rng={"torch": torch.get_rng_state(), "augment": s.aug_gen.get_state(),
                 "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
            config=s.cfg.to_dict(), preprocess=s.preprocess,
            ema=s.ema.state_dict() if s.ema is not None else {},
            lookahead=look.state_dict() if look is not None else {},
            scaler=s.scaler.state_dict() if s.scaler is not None else {})

    def restore(self, s: TrainState, path: Path | str) -> None:
        """Put this checkpoint into the trainer's state ``s`` (its progress too): a resume. The config is not
        restored (the resumed run's own, checked by cnnlab.training.resuming, is used)."""
        try:
            s.model.load_state_dict(self.model)
            s.optimizer.load_state_dict(self.optimizer)
            s.schedule.load_state_dict(self.scheduler)
            if s.ema is not None and self.ema:
                s.ema.load_state_dict(self.ema)
            if (look := lookahead_of(s)) is not None and self.lookahead:
                look.load_state_dict(self.lookahead)
            if s.scaler is not None and self.scaler:
                s.scaler.load_state_dict(self.scaler)
            # set_state takes CPU byte tensors, also for CUDA generators; map_location may have moved them.
            torch.set_rng_state(self.rng["torch"].cpu())
            s.aug_gen.set_state(self.rng["augment"].cpu())
            if self.rng["cuda"] and torch.cuda.is_available():  # a run saved on more GPUs than are visible now
                torch.cuda.set_rng_state_all([r.cpu() for r in self.rng["cuda"][:torch.cuda.device_count()]])
            s.progress = Progress(**self.progress)
        except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise does_not_fit(path, e) from None

    def restore_weights(self, s: TrainState, path: Path | str) -> None:
        """Only the weights (the model's and the EMA's): the best checkpoint's, for the final scoring."""
        try:
            s.model.load_state_dict(self.model)
            if s.ema is not None and self.ema:
                s.ema.load_state_dict(self.ema)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            raise does_not_fit(path, e) from None


def lookahead_of(s: TrainState):
    """The run's train.lookahead state (cnnlab.training.step.Lookahead), or None."""
    return getattr(getattr(s.train_step, "parts", None), "lookahead", None)

