"""The learning-rate range test (``cnnlab lr-find STUDY``, ``cnnlab.lr_find``): which lr to start from.

The study's own data, network, optimizer and loss are set up as training sets them up (:func:`cnnlab.training.loop.set_up`),
then the lr grows geometrically from ``start_lr`` to ``end_lr`` over ``steps`` optimizer steps (one training step
each, augmentation included; every parameter group keeps its ratio to ``optim.lr``, so ``optim.head_lr`` scales with
it). Each step's training loss is smoothed by an exponential moving average (``smooth``: its weight on the past,
bias-corrected as Adam's moments are), and the test stops once the smoothed loss exceeds ``diverge`` times its lowest
value, or the loss is not finite (L. N. Smith, "Cyclical learning rates for training neural networks", 2017; the
smoothing and the stop as in fastai's ``lr_find``).

The suggested lr (:func:`suggest`) follows one of two rules, named in the result: ``steepest``, the lr where the
smoothed loss falls fastest per decade of lr, looked for before the loss's minimum (the default), and ``min10``,
a tenth of the lr at the minimum; ``steepest`` falls back to ``min10`` when the minimum comes too early for a
slope. Nothing is written here, and no checkpoint ever: the caller (``cnnlab.api.lr_find``) writes
``lr_find.json`` and ``lr_find.png``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cnnlab.config.schema import Config, ConfigError
from cnnlab.data.batches import train_batches
from cnnlab.models import transfer
from cnnlab.training.loop import prepare, say, set_up, step_groups
from cnnlab.training.runtime import run_flags, tf32_flags

RULES = ("steepest", "min10")


@dataclass(frozen=True)
class RangeTest:
    """The range test's settings (``cnnlab lr-find``'s options; ``cnnlab.lr_find``'s arguments)."""

    start_lr: float = 1e-7
    end_lr: float = 10.0
    steps: int = 200
    smooth: float = 0.9
    diverge: float = 4.0
    rule: str = "steepest"

    def check(self) -> "RangeTest":
        """Each setting in its range, else one ConfigError naming it (before any data is read)."""
        def bad(name: str, value, allowed: str) -> ConfigError:
            flag = "--" + name.replace("_", "-")
            return ConfigError(f"lr-find {flag} ({name}): {value!r} is not allowed; {allowed}")

        for name in ("start_lr", "end_lr", "smooth", "diverge"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise bad(name, v, "give a finite number")
        if not 0 < self.start_lr < self.end_lr:
            raise bad("start_lr", self.start_lr, f"it must be > 0 and below --end-lr ({self.end_lr!r})")
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 5 <= self.steps <= 100_000:
            raise bad("steps", self.steps, "give a whole number of steps from 5 to 100000")
        if not 0 <= self.smooth < 1:
            raise bad("smooth", self.smooth, "the moving average's weight on the past is in [0, 1) (0: no smoothing)")
        if not self.diverge > 1:
            raise bad("diverge", self.diverge, "the stop is a factor above the lowest smoothed loss: give a number > 1")
        if self.rule not in RULES:
            raise bad("rule", self.rule, f"use one of {', '.join(RULES)}")
        return self


@dataclass
class LRFind:
    """What the range test found: every step's lr, loss and smoothed loss, why it stopped, the suggestion."""

    study: str
    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    stopped: str
    suggestion: float | None
    rule: str  # the rule the suggestion followed, in words
    settings: dict = field(default_factory=dict)
    out: str | None = None  # the folder lr_find.json and lr_find.png were written to (cnnlab.api.lr_find)

    @property
    def line(self) -> str:
        """The line to paste into the study file."""
        return f"optim: {{lr: {self.suggestion:.2g}}}" if self.suggestion is not None else "# no lr suggested"

    def record(self) -> dict:
        """lr_find.json's content."""
        return {**asdict(self), "line": self.line}


def lr_find(cfg: Config, out_dir: str | Path, test: RangeTest = RangeTest(), log: Callable[[str], None] = say) -> LRFind:
    """Run the range test on ``cfg``'s data, network and optimizer; ``out_dir`` is only where an image folder's
    split would be read from (nothing is written). Returns the :class:`LRFind`."""
    test = test.check()
    with run_flags(cfg.train), tf32_flags(cfg.train):  # as a run of the study computes
        s = set_up(cfg, Path(out_dir), False, log=lambda *_: None)
        log(f"lr-find: {cfg.name}, {cfg.model.name} with {cfg.optim.name}, lr from {test.start_lr:.0e} to "
            f"{test.end_lr:.0e} over at most {test.steps} steps of {cfg.train.batch_size * cfg.train.accumulate} "
            f"images, on {s.device}")
        lrs, losses, smoothed, stopped = range_test(s, test)
    suggestion, rule = suggest(lrs, smoothed, test.rule)
    return LRFind(study=cfg.name, lrs=lrs, losses=losses, smoothed=smoothed, stopped=stopped,
                  suggestion=suggestion, rule=rule, settings=asdict(test))


def range_test(s, test: RangeTest) -> tuple[list[float], list[float], list[float], str]:
    """Step the trainer's state ``s`` (:class:`~cnnlab.training.state.TrainState`) with a geometrically growing
    lr; returns the lrs, the losses, the smoothed losses and why it stopped."""
    groups = s.optimizer.param_groups
    ratios = [g.get("initial_lr", g["lr"]) / s.cfg.optim.lr for g in groups]  # optim.head_lr keeps its ratio
    factor = (test.end_lr / test.start_lr) ** (1 / (test.steps - 1))
    loss_sum = torch.zeros((), device=s.device, dtype=torch.float32)
    correct = torch.zeros((), device=s.device, dtype=torch.long)
    lrs, losses, smoothed, avg, epoch = [], [], [], 0.0, 0
    transfer.set_train_mode(s.model, True)
    while True:
        batches = train_batches(s.inputs.train_x, s.inputs.train_y, s.cfg.train.batch_size, s.cfg.seed, epoch,
                                drop_last=s.drop_last, sampler=s.cfg.data.sampler)
        for group in step_groups(batches, s.cfg.train.accumulate):
            lr = test.start_lr * factor ** len(lrs)
            for g, r in zip(groups, ratios):
                g["lr"] = lr * r
            n = sum(len(y) for _, y in group)
            loss_sum.zero_()
            s.train_step.accumulated((prepare(s, x, y, epoch) for x, y in group), n, loss_sum, correct, len(lrs))
            loss = float(loss_sum) / n
            lrs.append(lr)
            losses.append(loss)
            if not math.isfinite(loss):
                smoothed.append(math.nan)
                return lrs, losses, smoothed, f"the loss became non-finite at lr {lr:.2g}"
            avg = test.smooth * avg + (1 - test.smooth) * loss
            smoothed.append(avg / (1 - test.smooth ** len(lrs)))
            if smoothed[-1] > test.diverge * min(smoothed):
                return lrs, losses, smoothed, (f"the smoothed loss rose above {test.diverge:g}x its minimum at lr "
                                               f"{lr:.2g}")
            if len(lrs) == test.steps:
                return lrs, losses, smoothed, f"all {test.steps} steps taken (up to lr {lr:.2g})"
        epoch += 1


def suggest(lrs: list[float], smoothed: list[float], rule: str = "steepest") -> tuple[float | None, str]:
    """The suggested lr and the rule it followed, in words (see the module's text)."""
    y = np.asarray(smoothed, dtype=float)
    ok = np.isfinite(y)
    if ok.sum() < 2:
        return None, "none: fewer than two finite losses (lower --start-lr or raise --steps)"
    i_min = int(np.nanargmin(np.where(ok, y, np.nan)))
    at_min = f"{lrs[i_min] / 10:.2g} = a tenth of the lr of the lowest smoothed loss ({lrs[i_min]:.2g})"
    if rule == "min10":
        return lrs[i_min] / 10, f"min10: {at_min}"
    if i_min < 3:
        return lrs[i_min] / 10, f"min10 (the smoothed loss was lowest at the start: no slope before it): {at_min}"
    slope = np.gradient(y[:i_min + 1], np.log10(np.asarray(lrs[:i_min + 1])))
    i = int(np.argmin(slope))
    return lrs[i], (f"steepest: {lrs[i]:.2g}, where the smoothed loss falls fastest ({slope[i]:.3g} per decade of "
                    f"lr) before its minimum at {lrs[i_min]:.2g}")
