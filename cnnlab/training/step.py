"""One training step, built once per run: eager, or compiled with ``torch.compile`` (``train.compile``).

A step is one optimizer step: for each of its ``train.accumulate`` batches (one by default) forward + loss
(+ the batch's correct count, for the running accuracy), backward of the loss weighted by the batch's share
of the step's images, and adding the batch's loss and hits to the running sums on the device; then gradient
clipping (``optim.clip_grad_norm``, on the unscaled gradients under fp16's GradScaler), the optimizer update
(through GradScaler for fp16) and the EMA / lookahead update. The training loop calls it once per optimizer
step; the schedule and the evaluation points stay in the loop.

Compiled (``train.compile: true``), the unit handed to ``torch.compile`` is forward + loss + hit count;
AOTAutograd compiles its backward with it, so forward, loss and backward run as compiled graphs. The
optimizer update stays an eager call: on CUDA it is torch's fused kernel (one launch for sgd/adam/adamw,
optim.build_optimizer), and compiling it would need every learning rate as a tensor (torch's recipe for a
compiled optimizer with an LR scheduler); with plain float rates each schedule change recompiles it
(measured on this CPU: a 6 s recompile per step with a per-step rate), and foreach optimizers refuse a
tensor rate unless ``capturable``. Mode (:func:`compile_mode`): CUDA graphs (``reduce-overhead``) on a GPU
when every batch has the same shape, else ``max-autotune-no-cudagraphs``; the default mode on a CPU.
Shapes are kept static by dropping each epoch's short last batch (:func:`drops_last`, ``train.drop_last``),
so the last batch never recompiles. The first steps' extra time (compiling, CUDA-graph recording) is
measured and kept apart from training time (summary.json ``time.compile_s``).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

import torch

from cnnlab.models.airbench import WhiteningConv
from cnnlab.training.runtime import autocast_for

if TYPE_CHECKING:  # annotations only
    from cnnlab.training.state import TrainState

WARMUP_CALLS = 3  # compiled: call 1 compiles; with CUDA graphs, call 2 warms up and call 3 records


def drops_last(setting: Optional[bool], compile: bool, n: int, batch_size: int) -> bool:
    """Whether each epoch's short last batch is dropped: ``train.drop_last``, or when unset, when the step is
    compiled (one batch shape: no recompile, CUDA graphs apply). Never when there is no full batch at all."""
    drop = compile if setting is None else setting
    return bool(drop) and n >= batch_size and n % batch_size != 0


def steps_per_epoch(n: int, batch_size: int, drop_last: bool, accumulate: int = 1) -> int:
    """Optimizer steps in one epoch of ``n`` images: batches of ``batch_size``, ``accumulate`` batches a step (the
    epoch's last step takes the batches left over, so every step, and every stop, stays within one epoch)."""
    batches = max(1, n // batch_size if drop_last else math.ceil(n / batch_size))
    return math.ceil(batches / accumulate)


def compile_mode(device_type: str, static_shapes: bool) -> str:
    """torch.compile's mode for the step: CUDA graphs replay a step's kernels in one launch but need the
    same shapes every step, so a GPU gets ``reduce-overhead`` when batches are static and
    ``max-autotune-no-cudagraphs`` when they are not; a CPU has no graphs and gets the default mode."""
    if device_type != "cuda":
        return "default"
    return "reduce-overhead" if static_shapes else "max-autotune-no-cudagraphs"


class Lookahead:
    """``train.lookahead``: a slow copy of the model's floating-point state (weights and batch-norm
    statistics) that, every ``every`` steps, moves toward the weights (slow = d·slow + (1−d)·weights, with
    d = ``decay`` · (done / total)³: 0 early, so the slow copy just follows, rising to ``decay`` at the end)
    and the weights are reset to it; after the last step the weights become the slow copy. airbench94's
    schedule (every 5 steps, 0.95**5): it damps the late, noisy steps much as an EMA would, but on the
    weights that go on training, so no second network is scored."""

    def __init__(self, model: torch.nn.Module, decay: float, every: int, total_steps: int):
        self.decay, self.every, self.total = decay, every, max(1, total_steps)
        self.live = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.detach().clone() for t in self.live]

    def ramp(self, done: int) -> float:
        return self.decay * (done / self.total) ** 3

    @torch.no_grad()
    def after_step(self, done: int) -> None:
        """Called with the number of steps done so far (resume-safe: no counter of its own)."""
        if done % self.every == 0:
            d = self.ramp(done)
            torch._foreach_lerp_(self.slow, self.live, 1.0 - d)
            torch._foreach_copy_(self.live, self.slow)
        if done == self.total:
            torch._foreach_copy_(self.live, self.slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        torch._foreach_copy_(self.slow, state["slow"])


class WhiteningBiasFreeze:
    """``train.whitening_bias_epochs``: the whitening layers' biases learn during the first ``steps`` steps
    only (airbench94: 3 epochs), then keep their value: without a gradient the optimizer leaves them as they
    are (no weight decay either)."""

    def __init__(self, model: torch.nn.Module, steps: int):
        self.steps = steps
        self.biases = [m.bias for m in model.modules() if isinstance(m, WhiteningConv)]

    def before_step(self, step: int) -> None:
        learn = step < self.steps
        for b in self.biases:
            b.requires_grad_(learn)


@dataclass
class StepParts:
    """What one step touches (the trainer's objects, gathered by :func:`build_step`)."""

    net: torch.nn.Module  # maps inputs to outputs (the model, or a frozen backbone's head)
    model: torch.nn.Module  # the whole network, which the EMA follows
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    scaler: Optional[torch.amp.GradScaler]
    ema: Any  # runtime.EMA or None
    precision: str
    device: torch.device
    lookahead: Optional[Lookahead] = None
    freeze: Optional[WhiteningBiasFreeze] = None
    clip_grad_norm: Optional[float] = None  # optim.clip_grad_norm: the gradients' largest total 2-norm, or None


class Step:
    """``step(x, y, loss_sum, correct) -> compile seconds found at this call`` (0.0 but once when compiled)."""

    def __init__(self, parts: StepParts, mode: Optional[str] = None):
        self.parts, self.mode = parts, mode
        self.forward_loss = torch.compile(self._forward_loss, mode=mode) if mode else self._forward_loss
        self.graphs = mode == "reduce-overhead"
        self.times: list[float] = []  # compiled: the first calls' durations, then one steady call's

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.parts
        with autocast_for(p.precision, p.device):
            out = p.net(x)
            loss = p.loss_fn(out, y)
        return loss, self._hits(out, y)

    @staticmethod
    def _hits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The batch's correct predictions, summed on the device (the running training accuracy); argmax's
        integer output carries no gradient, so ``out`` needs no detach (one op fewer). Soft targets (mixup,
        cutmix): a prediction is correct when it is the class with the largest share."""
        return (out.argmax(1) == (y.argmax(1) if y.dim() == 2 else y)).sum()

    def _backward(self, loss: torch.Tensor) -> None:
        (self.parts.scaler.scale(loss) if self.parts.scaler is not None else loss).backward()

    def _clip(self) -> None:
        """``optim.clip_grad_norm``: scale the gradients down to that total 2-norm (the true gradients': a
        GradScaler's are unscaled first, and its step then skips the unscaling) when they are longer."""
        p = self.parts
        if p.clip_grad_norm is None:
            return
        if p.scaler is not None:
            p.scaler.unscale_(p.optimizer)
        params = [q for g in p.optimizer.param_groups for q in g["params"] if q.grad is not None]
        torch.nn.utils.clip_grad_norm_(params, p.clip_grad_norm)

    def _update(self) -> None:
        p = self.parts
        if p.scaler is not None:
            p.scaler.step(p.optimizer)
            p.scaler.update()
        else:
            p.optimizer.step()

    def _average(self, done: int) -> None:
        if self.parts.ema is not None:
            self.parts.ema.update_parameters(self.parts.model)
        if self.parts.lookahead is not None:
            self.parts.lookahead.after_step(done)

    @staticmethod
    @torch.no_grad()
    def _accumulate(loss: torch.Tensor, hits: torch.Tensor, n: int, loss_sum: torch.Tensor,
                    correct: torch.Tensor) -> None:
        loss_sum.add_(loss, alpha=n)  # on the device: no host sync per step; no_grad: no detach op
        correct.add_(hits)

    def __call__(self, x: torch.Tensor, y: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor,
                 step: int = 0) -> float:
        """One optimizer step on one batch; see :meth:`accumulated`."""
        return self.accumulated([(x, y)], len(y), loss_sum, correct, step)

    def accumulated(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], n: int, loss_sum: torch.Tensor,
                    correct: torch.Tensor, step: int = 0) -> float:
        """One optimizer step on the gradients of ``batches`` (``train.accumulate`` of them, ``n`` images in all):
        each batch's mean loss is weighted by its share of the ``n`` images before its backward, so the summed
        gradient is that of the mean loss over all ``n`` (one batch of them, for a net without batch norm);
        then clipping, the update and the averages, once. ``step``: the run's optimizer steps done before this
        one (the schedules of lookahead and the whitening bias). Returns the compile seconds found at this call."""
        timing = self.mode is not None and len(self.times) <= WARMUP_CALLS
        if timing:
            t0 = self._now()
        if self.parts.freeze is not None:
            self.parts.freeze.before_step(step)
        self.parts.optimizer.zero_grad(set_to_none=True)
        for x, y in batches:
            if self.graphs:  # a new iteration: the previous step's graph outputs may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            loss, hits = self.forward_loss(x, y)
            self._backward(loss if len(y) == n else loss * (len(y) / n))  # one batch: no extra op
            self._accumulate(loss, hits, len(y), loss_sum, correct)
        self._clip()
        self._update()
        self._average(step + 1)
        if not timing:
            return 0.0
        self.times.append(self._now() - t0)
        if len(self.times) <= WARMUP_CALLS:
            return 0.0
        # the extra time of the first calls over as many steady ones (the last call measured)
        return max(0.0, sum(self.times[:WARMUP_CALLS]) - WARMUP_CALLS * self.times[-1])

    def _now(self) -> float:
        if self.parts.device.type == "cuda":
            torch.cuda.synchronize(self.parts.device)
        return time.perf_counter()

    def record(self, drop_last: bool) -> dict:
        """summary.json's ``step``: how the step ran."""
        return {"compiled": self.mode is not None, "mode": self.mode, "drop_last": drop_last}


def build_step(s: TrainState, compile: bool, static_shapes: bool) -> Step:
    """The run's step from the trainer's state ``s`` (cnnlab.training.state.TrainState)."""
    tc = s.cfg.train
    lookahead = Lookahead(s.model, tc.lookahead, tc.lookahead_every, s.total_steps) if tc.lookahead else None
    freeze = None if tc.whitening_bias_epochs is None else \
        WhiteningBiasFreeze(s.model, round(tc.whitening_bias_epochs * s.steps_per_epoch))
    parts = StepParts(net=s.net, model=s.model, loss_fn=s.loss_fn, optimizer=s.optimizer, scaler=s.scaler,
                      ema=s.ema, precision=s.compute.precision, device=s.device, lookahead=lookahead, freeze=freeze,
                      clip_grad_norm=s.cfg.optim.clip_grad_norm)
    # several forwards per step: no CUDA graphs (a replay could overwrite the previous batch's gradients' buffers)
    return Step(parts, compile_mode(s.device.type, static_shapes and tc.accumulate == 1) if compile else None)
