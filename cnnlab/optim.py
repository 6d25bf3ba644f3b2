"""Optimizers, learning-rate schedules and losses, each looked up by name.

A study file names them (``optim.name: adamw``, ``sched.name: step``,
``loss.name: mse``); the registries below map those names to torch objects.
Schedules can step once per epoch or once per iteration (``sched.interval``);
the trainer tells :func:`build_scheduler` how many steps a run has so that
cosine and one-cycle schedules span the whole run either way.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.registry import LOSSES, OPTIMIZERS, SCHEDULERS

# ----------------------------------------------------------------------------- optimizers


# The multi-tensor (foreach) kernels update all parameters in a few calls, on CPU and GPU alike.
FAST = {"foreach": True}


@OPTIMIZERS.register("sgd")
def sgd(params, cfg):
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay, **FAST)


@OPTIMIZERS.register("adam")
def adam(params, cfg):
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps or 1e-8,
                            weight_decay=cfg.weight_decay, **FAST)


@OPTIMIZERS.register("adamw")
def adamw(params, cfg):
    # AdamW's own default decay (0.01) only applies when the study leaves weight_decay at 0.
    wd = cfg.weight_decay if "weight_decay" in cfg.model_fields_set else 0.01
    return torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps or 1e-8,
                             weight_decay=wd, **FAST)


@OPTIMIZERS.register("adadelta")
def adadelta(params, cfg):
    return torch.optim.Adadelta(params, lr=cfg.lr, eps=cfg.eps or 1e-6, weight_decay=cfg.weight_decay,
                                **FAST)


@OPTIMIZERS.register("rmsprop")
def rmsprop(params, cfg):
    return torch.optim.RMSprop(params, lr=cfg.lr, momentum=cfg.momentum, eps=cfg.eps or 1e-8,
                               weight_decay=cfg.weight_decay, **FAST)


def build_optimizer(param_groups, cfg) -> torch.optim.Optimizer:
    return OPTIMIZERS.get(cfg.name)(param_groups, cfg)


# ----------------------------------------------------------------------------- schedules
# Each builder gets the optimizer, the sched config and the number of scheduler steps in
# the whole run (epochs or iterations, by sched.interval). "plateau" is stepped with the
# validation loss by the trainer; the others are stepped without arguments.


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
    base = opt.param_groups[0]["lr"]
    max_lr = [g["lr"] * cfg.max_lr / base for g in opt.param_groups] if cfg.max_lr else [g["lr"] for g in opt.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=max_lr, total_steps=max(2, total_steps),
                                               pct_start=cfg.pct_start, cycle_momentum=False)


@SCHEDULERS.register("plateau")
def plateau_schedule(opt, cfg, total_steps):
    return torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=cfg.gamma, patience=cfg.patience)


def build_scheduler(opt, cfg, total_steps: int):
    sched = SCHEDULERS.get(cfg.name)(opt, cfg, total_steps)
    if cfg.warmup_steps and sched is not None and cfg.name != "plateau":
        warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=1e-3, total_iters=cfg.warmup_steps)
        sched = torch.optim.lr_scheduler.SequentialLR(opt, [warm, sched], milestones=[cfg.warmup_steps])
    return sched


# ----------------------------------------------------------------------------- losses
# A loss builder returns fn(outputs, targets) -> scalar. ``accepts`` names the model
# output kinds it makes sense for; checks.py uses it to refuse impossible pairs.


@LOSSES.register("cross_entropy")
def cross_entropy(cfg, num_classes):
    return nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)


cross_entropy.accepts = ("logits", "probs")  # probs is allowed but warned about (double softmax)


@LOSSES.register("nll")
def nll(cfg, num_classes):
    return nn.NLLLoss()


nll.accepts = ("log_probs",)


@LOSSES.register("mse")
def mse(cfg, num_classes):
    def mse_one_hot(outputs, targets):
        return F.mse_loss(outputs.float(), F.one_hot(targets, num_classes).float())

    return mse_one_hot


mse.accepts = ("logits", "probs")


@LOSSES.register("multi_margin")
def multi_margin(cfg, num_classes):
    return nn.MultiMarginLoss()


multi_margin.accepts = ("logits", "probs")


def build_loss(cfg, num_classes: int):
    return LOSSES.get(cfg.name)(cfg, num_classes)


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


def lr_of(opt) -> float:
    return float(opt.param_groups[-1]["lr"]) if opt.param_groups else math.nan
