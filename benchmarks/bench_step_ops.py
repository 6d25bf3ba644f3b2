"""Operators dispatched per training step: the model's own work against what the loop adds (issue 17).

At GPU speed each aten operator is a kernel launch the host must issue, so a small network's step is
bounded by how many there are. This counts, with a ``TorchDispatchMode``, every aten operator the real
training loop (``cnnlab.training.loop.train_loop``; evaluation points excluded) dispatches for the quick start's
LeNet-5 (recipes/quickstart_lenet5_mnist.yaml, shortened, on the CPU, eager), and sorts each by the
code it came from (the innermost frame that names a part):

- the model's own work: forward and loss (under an ``nn.Module`` call), backward (the autograd engine);
- what the loop adds: augmentation and normalisation (cnnlab.data.augment), batch gather (cnnlab.data.batches),
  the accuracy count and the running loss/accuracy sums (cnnlab.training.step), the optimizer (torch.optim),
  the EMA (``update_parameters``), the schedule (torch.optim.lr_scheduler), and the rest of the loop.

Counts are per step, averaged over the steps after the first two (the optimizer's and the EMA's state
set-up), with crop + flip + EMA on and off. Counted, not timed: the figures do not depend on the load.

    .venv/bin/python benchmarks/bench_step_ops.py [--steps 40] [--json]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from collections import Counter
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnnlab.training import loop as train  # noqa: E402
from cnnlab.config.load import load_config  # noqa: E402
from cnnlab.training.runtime import cpu_model  # noqa: E402

QUICKSTART = ROOT / "recipes" / "quickstart_lenet5_mnist.yaml"
MODEL_PARTS = ("forward + loss", "backward")
# (path fragment, function name or None for any) -> part; the innermost frame that matches names the op's part
PARTS = [
    ("cnnlab/training/step.py", "_hits", "accuracy count"),
    ("cnnlab/training/step.py", "_accumulate", "loss/accuracy sums"),
    ("cnnlab/training/runtime.py", "update_parameters", "EMA"),
    ("torch/optim/lr_scheduler.py", None, "schedule"),
    ("torch/optim/", None, "optimizer"),
    ("torch/amp/grad_scaler.py", None, "optimizer"),
    ("torch/nn/modules/module.py", "_call_impl", "forward + loss"),
    ("torch/autograd/", None, "backward"),
    ("cnnlab/data/augment.py", None, "augmentation"),
    ("cnnlab/data/batches.py", None, "batch gather"),
]


def part_of(frame) -> str:
    while frame is not None:
        name, func = frame.f_code.co_filename.replace("\\", "/"), frame.f_code.co_name
        for fragment, function, part in PARTS:
            if fragment in name and (function is None or function == func):
                return part
        frame = frame.f_back
    return "loop, other"


class Counting(TorchDispatchMode):
    """Counts each aten operator by part while ``on()``."""

    def __init__(self, on):
        super().__init__()
        self.on, self.parts, self.ops = on, Counter(), Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.on():
            part = part_of(sys._getframe(1))
            self.parts[part] += 1
            self.ops[(part, str(func.overloadpacket))] += 1
        return func(*args, **(kwargs or {}))


def count(augment: bool, ema: bool, steps: int, out: Path) -> tuple[Counter, Counter, int]:
    """(ops per part, ops by (part, name), steps counted) for one shortened quick-start run."""
    extra = {"data.augment.crop_padding": 2, "data.augment.flip": True} if augment else {}
    if ema:
        extra["train.ema"] = 0.99
    cfg = load_config(QUICKSTART, {"data.train_limit": 64 * steps, "data.val_size": 64, "train.epochs": 1,
                                   "train.threads": 1, "train.progress": False, **extra})
    state = {"s": None, "eval": False}
    real_loop, real_eval = train.train_loop, train.evaluation_point

    def loop(s, stop):
        state["s"] = s
        try:
            return real_loop(s, stop)
        finally:
            state["s"] = None

    def evaluation_point(s):
        state["eval"] = True
        try:
            return real_eval(s)
        finally:
            state["eval"] = False

    mode = Counting(lambda: state["s"] is not None and not state["eval"] and state["s"].progress.step >= 2)
    train.train_loop, train.evaluation_point = loop, evaluation_point
    try:
        with mode:
            summary = train.run(cfg, out, log=lambda m: None)
    finally:
        train.train_loop, train.evaluation_point = real_loop, real_eval
    return mode.parts, mode.ops, summary["time"]["steps"] - 2


def table(results: dict) -> str:
    names = list(results)
    parts = [*MODEL_PARTS, *sorted({p for r in results.values() for p in r[0]} - set(MODEL_PARTS))]
    lines = ["| part | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    per = {n: {p: c / r[2] for p, c in r[0].items()} for n, r in results.items()}
    for p in parts:
        lines.append(f"| {p} | " + " | ".join(f"{per[n].get(p, 0):.1f}" for n in names) + " |")
    model = {n: sum(per[n].get(p, 0) for p in MODEL_PARTS) for n in names}
    total = {n: sum(per[n].values()) for n in names}
    lines.append("| **model's own** | " + " | ".join(f"**{model[n]:.1f}**" for n in names) + " |")
    lines.append("| **loop adds** | " + " | ".join(f"**{total[n] - model[n]:.1f}**" for n in names) + " |")
    lines.append("| **per step** | " + " | ".join(f"**{total[n]:.1f}**" for n in names) + " |")
    return "\n".join(lines)


def loop_adds(parts: Counter, steps: int) -> float:
    """Operators per step outside the model's own forward, loss and backward."""
    return sum(c for p, c in parts.items() if p not in MODEL_PARTS) / steps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=40, help="training steps per configuration (one epoch)")
    ap.add_argument("--json", action="store_true", help="also print each part's operators by name")
    args = ap.parse_args(argv)
    print(f"torch {torch.__version__}, CPU: {cpu_model()}, {platform.python_version()}", flush=True)
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for name, augment, ema in (("crop+flip+EMA", True, True), ("plain", False, False)):
            results[name] = count(augment, ema, args.steps, Path(work) / name)
    print(table(results))
    if args.json:
        for name, (_, ops, steps) in results.items():
            print(name, json.dumps({f"{p}: {o}": round(c / steps, 2) for (p, o), c in sorted(ops.items())}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
