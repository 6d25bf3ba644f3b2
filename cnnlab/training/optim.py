"""Optimizers, learning-rate schedules and losses, each looked up by name.

A study file names them (``optim.name: adamw``, ``sched.name: step``,
``loss.name: mse``); the registries below map those names to torch objects.
Schedules can step once per epoch or once per iteration (``sched.interval``), or on
the validation loss (``plateau``); :class:`Schedule` decides which, in one place, and
:func:`build_schedule` gives it the number of steps a run has so that cosine and
one-cycle schedules span the whole run either way.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.registry import LOSSES, OPTIMIZERS, SCHEDULERS

# ----------------------------------------------------------------------------- optimizers


# The multi-tensor (foreach) kernels update all parameters in a few calls, on CPU and GPU alike.
FAST = {"foreach": True}


@OPTIMIZERS.register("sgd")
def sgd(params, cfg, fast=FAST):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **fast)


@OPTIMIZERS.register("adam")
def adam(params, cfg, fast=FAST):
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps or 1e-8,
                            weight_decay=cfg.weight_decay, **fast)


@OPTIMIZERS.register("adamw")
def adamw(params, cfg, fast=FAST):
    # weight_decay: null is already AdamW's own 0.01 here (resolved at validation: config.OWN_WEIGHT_DECAY)
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps or 1e-8,
                             weight_decay=cfg.weight_decay, **fast)


@OPTIMIZERS.register("adadelta")
def adadelta(params, cfg, fast=FAST):
    return torch.optim.Adadelta(params, lr=cfg.lr, eps=cfg.eps or 1e-6, weight_decay=cfg.weight_decay,
                                **fast)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params, cfg, fast=FAST):
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps or 1e-8,
                               weight_decay=cfg.weight_decay, **fast)


# The fused kernels do the whole update in one call (one launch on CUDA; on a CPU one operator instead of
# ~29 for Adam, which also reads its step counters back per parameter: benchmarks/bench_step_ops.py), and
# with fp16 they take GradScaler's inf check themselves, sparing it a .item() (a host-device sync) per step.
# Except fused SGD under a loss scaler (fp16): torch's _fused_sgd creates the momentum buffers with empty_like
# on the first step and the kernel leaves them untouched when the scaler found an inf, which fp16's first steps
# usually do (the scale starts at 65536); the next step then reads uninitialised memory (measured on a CPU:
# a buffer of 4e24 after one skipped step, the tiny airbench run diverged in fp16; adam and adamw keep zeros).
FUSED = {"fused": True}
HAS_FUSED = ("sgd", "adam", "adamw")
NOT_FUSED_WHEN_SCALED = ("sgd",)


def build_optimizer(param_groups, cfg, fused: bool = False, scaled: bool = False) -> torch.optim.Optimizer:
    """``fused``: use torch's fused kernels where this optimizer has them (the trainer asks on every device);
    ``scaled``: the steps go through a GradScaler (fp16), which rules out :data:`NOT_FUSED_WHEN_SCALED`."""
    builder = OPTIMIZERS.get(cfg.name)
    use = fused and cfg.name in HAS_FUSED and not (scaled and cfg.name in NOT_FUSED_WHEN_SCALED)
    return builder(param_groups, cfg, FUSED) if use else builder(param_groups, cfg)


# ----------------------------------------------------------------------------- schedules
# Each builder gets the optimizer, the sched config and the number of scheduler steps in
# the whole run (epochs or iterations, by sched.interval). Schedules named in ON_METRIC are
# stepped with the validation loss (see Schedule); the others are stepped without arguments.

ON_METRIC = ("plateau",)


@SCHEDULERS.register("none")
def no_schedule(opt, cfg, total_steps):
    return None


@SCHEDULERS.register("step")
def step_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.step_size, gamma=cfg.gamma)


@SCHEDULERS.register("multistep")
def multistep_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.MultiStepLR(opt, milestones=cfg.milestones, gamma=cfg.gamma)


@SCHEDULERS.register("exponential")
def exponential_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.gamma)


@SCHEDULERS.register("cosine")
def cosine_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps), eta_min=cfg.min_lr)


@SCHEDULERS.register("onecycle")
def onecycle_schedule(opt, cfg, total_steps):
    # one max_lr per parameter group, scaled like the groups' own lrs (keeps optim.head_lr's ratio)
    base = opt.defaults["lr"]  # optim.lr (the first group may be one with its own lr)
    max_lr = [g["lr"] * cfg.max_lr / base for g in opt.param_groups] if cfg.max_lr else [g["lr"] for g in opt.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(2, total_steps),
                                               pct_start=cfg.pct_start, cycle_momentum=False)


@SCHEDULERS.register("plateau")
def plateau_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=cfg.patience)


def build_scheduler(opt, cfg, total_steps: int):
    sched = SCHEDULERS.get(cfg.name)(opt, cfg, total_steps)
    if cfg.warmup_steps and sched is not None and cfg.name not in ON_METRIC:
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=cfg.warmup_steps)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, sched], milestones=[cfg.warmup_steps])
    return sched


class Schedule:
    """When the learning-rate schedule steps, decided once for the training loop.

    The loop calls all three hooks at their moments; each does nothing unless it is this
    schedule's: ``after_step`` (``sched.interval=step``), ``after_epoch`` (``interval=epoch``)
    or ``after_eval`` (a schedule stepped on the validation loss, such as ``plateau``: at every
    evaluation point with ``interval=step``, else at those that end an epoch).
    """

    def __init__(self, scheduler, cfg):
        self.scheduler = scheduler
        self.steps_on = None if scheduler is None else "metric" if cfg.name in ON_METRIC else cfg.interval
        self.every_eval = cfg.interval == "step"

    def after_step(self) -> None:
        if self.steps_on == "step":
            self.scheduler.step()

    def after_epoch(self) -> None:
        if self.steps_on == "epoch":
            self.scheduler.step()

    def after_eval(self, val_loss: float | None, epoch_end: bool) -> None:
        if self.steps_on == "metric" and val_loss is not None and (self.every_eval or epoch_end):
            self.scheduler.step(val_loss)

    def state_dict(self) -> dict:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.scheduler is not None and state:
            self.scheduler.load_state_dict(state)


def build_schedule(opt, cfg, total_steps: int, epochs: float) -> Schedule:
    """The run's schedule, spanning its ``total_steps`` iterations or its ``ceil(epochs)`` epochs."""
    return Schedule(build_scheduler(opt, cfg, total_steps if cfg.interval == "step" else math.ceil(epochs)), cfg)


# ----------------------------------------------------------------------------- losses
# A loss builder returns fn(outputs, targets) -> scalar. ``accepts`` names the model
# output kinds it makes sense for; checks.py uses it to refuse impossible pairs.


def soft_target_loss(logp: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None,
                     smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Cross-entropy (focal with ``gamma`` > 0) of log-probabilities ``logp`` against class probabilities
    ``targets`` [N, C] (mixup / cutmix): Σ_c t_c · w_c · −log p_c per image, with the targets smoothed as
    t = (1 − smoothing)·targets + smoothing / C, summed and divided by Σ_i Σ_c w_c · targets_ic (N unweighted).
    For one-hot targets this is torch's cross-entropy of class indices with the same weights and label smoothing
    (tests/test_optim.py), so mixing the one-hot targets and smoothing them commute."""
    logp = logp.float()
    t = targets.float()
    smoothed = t if smoothing == 0 else t * (1 - smoothing) + smoothing / t.shape[1]
    per_class = -logp if gamma == 0 else -(1 - logp.exp()).pow(gamma) * logp
    if weight is None:
        return (smoothed * per_class).sum() / len(t)
    return (smoothed * per_class * weight).sum() / (t * weight).sum()


class CrossEntropy(nn.Module):
    """``loss.name: cross_entropy`` (``log_probs``: nll): class indices go to torch's loss; class probabilities
    [N, C] (mixup / cutmix targets) to :func:`soft_target_loss` with the same weights and label smoothing."""

    def __init__(self, weight: torch.Tensor | None = None, label_smoothing: float = 0.0, log_probs: bool = False):
        super().__init__()
        self.smoothing, self.log_probs = label_smoothing, log_probs
        self.register_buffer("weight", weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():
            logp = outputs if self.log_probs else F.log_softmax(outputs.float(), dim=1)
            return soft_target_loss(logp, targets, self.weight, self.smoothing)
        if self.log_probs:
            return F.nll_loss(outputs, targets, weight=self.weight)
        return F.cross_entropy(outputs, targets, weight=self.weight, label_smoothing=self.smoothing)


@LOSSES.register("cross_entropy")
def cross_entropy(cfg, num_classes, weight=None):
    return CrossEntropy(weight, cfg.label_smoothing)


cross_entropy.accepts = ("logits", "probs")  # probs is allowed but warned about (double softmax)


@LOSSES.register("nll")
def nll(cfg, num_classes, weight=None):
    return CrossEntropy(weight, log_probs=True)


nll.accepts = ("log_probs",)


@LOSSES.register("mse")
def mse(cfg, num_classes, weight=None):  # class weights are refused for mse at load (config.Config)
    def mse_one_hot(outputs, targets):  # class probabilities (mixup / cutmix) are the targets as they are
        goal = targets.float() if targets.is_floating_point() else F.one_hot(targets, num_classes).float()
        return F.mse_loss(outputs.float(), goal)

    return mse_one_hot


mse.accepts = ("logits", "probs")


@LOSSES.register("multi_margin")
def multi_margin(cfg, num_classes, weight=None):
    return nn.MultiMarginLoss(weight=weight)


multi_margin.accepts = ("logits", "probs")


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): each image's cross-entropy −log p_t times (1 − p_t)^gamma, so images the
    model already gets right count less; gamma 0 is cross-entropy. With class weights w the mean is weighted
    as nn.CrossEntropyLoss weights it: Σ w_y · loss / Σ w_y."""

    def __init__(self, gamma: float, weight: torch.Tensor | None = None):
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if targets.is_floating_point():  # class probabilities (mixup / cutmix): Σ_c t_c · focal term of c
            return soft_target_loss(F.log_softmax(outputs.float(), dim=1), targets, self.weight, gamma=self.gamma)
        logp = F.log_softmax(outputs.float(), dim=1).gather(1, targets[:, None]).squeeze(1)
        loss = -logp if self.gamma == 0 else -(1 - logp.exp()).pow(self.gamma) * logp
        if self.weight is None:
            return loss.mean()
        w = self.weight[targets]
        return (w * loss).sum() / w.sum()


@LOSSES.register("focal")
def focal(cfg, num_classes, weight=None):
    return FocalLoss(cfg.gamma, weight)


focal.accepts = ("logits", "probs")  # probs: a double softmax, as for cross_entropy


def class_weights(setting, train_y: torch.Tensor, num_classes: int) -> torch.Tensor | None:
    """``loss.class_weights`` as a tensor on ``train_y``'s device: ``auto`` = each class's inverse frequency in
    the training split, normalised to mean 1 over the classes (a class with no training image gets 0); a list
    is taken as given; None = unweighted."""
    if setting is None:
        return None
    if setting != "auto":
        if len(setting) != num_classes:
            raise ConfigError(f"invalid config: loss.class_weights: {len(setting)} weights for {num_classes} "
                              f"classes; give one weight per class, in the order of the class list, or 'auto'")
        return torch.tensor(setting, dtype=torch.float32, device=train_y.device)
    counts = torch.bincount(train_y.long(), minlength=num_classes).float()
    inverse = torch.where(counts > 0, 1 / counts.clamp_min(1), torch.zeros_like(counts))
    return inverse * (num_classes / inverse.sum())


def build_loss(cfg, num_classes: int, weight: torch.Tensor | None = None):
    """The loss ``cfg.name`` names; ``weight``: one weight per class (:func:`class_weights`), or None."""
    return LOSSES.get(cfg.name)(cfg, num_classes, weight)


def nll_of(outputs: torch.Tensor, targets: torch.Tensor, output_kind: str) -> torch.Tensor:
    """Per-sample negative log-likelihood for evaluation, whatever the model outputs."""
    outputs = outputs.float()
    if output_kind == "log_probs":
        logp = outputs
    elif output_kind == "probs":
        logp = outputs.clamp_min(1e-12).log()
    else:
        logp = F.log_softmax(outputs, dim=1)
    return -logp.gather(1, targets[:, None]).squeeze(1)


def lrs_of(opt) -> dict:
    """The learning rates a learning curve records: ``lr``, the body's (the first parameter group
    that is not the head's), and ``head_lr`` when the head has its own groups (``optim.head_lr``)."""
    groups = opt.param_groups
    if not groups:
        return {"lr": math.nan}
    is_head = [str(g.get("name", "")).startswith("head") for g in groups]
    head = [g for g, h in zip(groups, is_head) if h]
    body = [g for g, h in zip(groups, is_head) if not h] or head
    return {"lr": float(body[0]["lr"]), **({"head_lr": float(head[0]["lr"])} if head else {})}
