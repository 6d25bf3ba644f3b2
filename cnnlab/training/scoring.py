"""Scoring a trained network: loss, accuracy and confusion-matrix metrics of a data split.

:class:`Evaluator` scores a model on a split in large batches (optionally averaging the
probabilities of test-time augmented views, ``train.tta``); the trainer uses it at every
evaluation point and, through :func:`score_splits`, for the final scores of train /
validation / test (printed by :func:`print_results`). :func:`cnnlab.inference.predict.evaluate_run` scores a finished
run's checkpoint again (``cnnlab eval``). Test-time augmentation flips and shifts images, so
it needs 4-D image batches: a trainer that trains a head on cached backbone features scores
TTA through the whole network.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch
from torch import nn

from cnnlab.training import metrics
from cnnlab.training.calibration import calibration_scores
from cnnlab.models import transfer
from cnnlab.data.batches import eval_batches
from cnnlab.training.optim import nll_of
from cnnlab.training.runtime import autocast_for

if TYPE_CHECKING:  # annotations only
    from cnnlab.training.state import TrainState

MISCLASSIFIED_KEPT = 32  # test images kept for the report's "most confident mistakes" grid
SPLITS = ("train", "val", "test")


@dataclass
class Evaluator:
    """Scores a model on a split in large batches, optionally with test-time augmentation."""

    preprocess: object  # fn(uint8 batch, generator) -> normalised float batch
    batch_size: int
    precision: str
    device: torch.device
    output_kind: str  # logits | log_probs | probs: what the scored model returns
    num_classes: int
    tta: str = "none"
    channels_last: bool = False

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """A stored batch as the network takes it (normalised, in the chosen memory format)."""
        x = self.preprocess(x, None)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def autocast(self):
        return autocast_for(self.precision, self.device)

    def outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.prepare(x)
        if self.tta != "none" and x.ndim != 4:
            raise ValueError(f"train.tta={self.tta} augments images, but this batch has shape {tuple(x.shape)} "
                             "(features, not images); score it through the whole network")
        with self.autocast():
            out = model(x).float()
            if self.tta != "none":  # each view built when scored: one extra batch in memory at a time
                views = [lambda: x.flip(3)] if "flip" in self.tta else []  # mirror image (not for digits)
                if "translate" in self.tta:  # one pixel diagonally each way
                    views += [lambda d=d: torch.roll(x, shifts=(d, d), dims=(2, 3)) for d in (1, -1)]
                out = self._to_probs(out)
                for view in views:
                    out = out + self._to_probs(model(view()).float())
                out = (out / (1 + len(views))).clamp_min(1e-12).log()  # averaged probabilities, as log-probs
        return out

    def _to_probs(self, out: torch.Tensor) -> torch.Tensor:
        if self.output_kind == "probs":
            return out
        if self.output_kind == "log_probs":
            return out.exp()
        return out.softmax(1)

    @torch.inference_mode()
    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, full: bool = False, bar=None) -> dict:
        """Mean loss and accuracy (and with ``full`` the confusion-matrix metrics and the worst mistakes).

        An empty split (``data.val_size=0``) scores None: there is nothing to measure."""
        if len(x) == 0:
            empty = {"loss": None, "accuracy": None}
            if full:
                cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
                empty = {**metrics.scores(cm), **empty, "ece": None, "reliability": None, "_mistakes": {
                    "index": torch.zeros(0, dtype=torch.long), "true": torch.zeros(0, dtype=torch.long),
                    "pred": torch.zeros(0, dtype=torch.long), "confidence": torch.zeros(0)}}
            return empty
        was_training = model.training
        model.eval()
        kind = "log_probs" if self.tta != "none" else self.output_kind
        while True:
            try:
                loss_sum, preds, confs = self._walk(model, x, y, kind, full, bar)
                break
            except torch.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                # out of memory (224-px images, TTA views): halve the batch for this and later evaluations
                self.batch_size = max(1, self.batch_size // 2)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
        transfer.set_train_mode(model, was_training)  # frozen batch norm stays in eval mode
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=self.device)
        n = max(1, len(x))
        result = {"loss": float(loss_sum) / n, "accuracy": float((pred == y).sum()) / n}
        if full:
            all_conf = torch.cat(confs)
            result = {**metrics.scores(metrics.confusion_matrix(y, pred, self.num_classes)), "loss": result["loss"],
                      **calibration_scores(all_conf, pred == y)}  # ECE and the reliability diagram's bins
            wrong = (pred != y).nonzero().squeeze(1)
            conf = all_conf[wrong]
            top = wrong[conf.argsort(descending=True)[:MISCLASSIFIED_KEPT]]
            result["_mistakes"] = {"index": top, "true": y[top].cpu(), "pred": pred[top].cpu(),
                                   "confidence": all_conf[top].float().cpu()}
        return result

    def _walk(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, kind: str, full: bool, bar=None):
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        preds, confs = [], []
        for xb, yb in eval_batches(x, y, self.batch_size):
            out = self.outputs(model, xb)
            loss_sum += nll_of(out, yb, kind).double().sum()
            preds.append(out.argmax(1))
            if bar is not None:
                bar.update(len(yb))
            if full:
                confs.append(out.float().softmax(1).amax(1) if kind == "logits" else
                             (out.exp() if kind == "log_probs" else out).amax(1))
        return loss_sum, preds, confs


def final_splits(score_train: bool = True) -> tuple[str, ...]:
    """The splits a run scores at its end: all three, or without train (``train.score_train: false``, speed
    runs: scoring 50,000 training images, three times over with TTA, can outlast the training)."""
    return SPLITS if score_train else tuple(s for s in SPLITS if s != "train")


def score_splits(evaluator: Evaluator, model: nn.Module, inputs, test_images: torch.Tensor,
                 progress: bool = False, splits: tuple[str, ...] = SPLITS) -> tuple[dict, dict]:
    """Full scores of ``splits`` (train / val / test), and the test split's most confident mistakes (with
    their images); with ``progress`` a bar over the images scored when stderr is a terminal."""
    results, mistakes = {}, None
    bar = None
    if progress and sys.stderr.isatty():
        from tqdm import tqdm

        total = sum(len(getattr(inputs, f"{split}_y")) for split in splits)
        bar = tqdm(total=total, desc="final scoring", unit="img", leave=False, dynamic_ncols=True)
    for split in splits:
        r = evaluator.score(model, getattr(inputs, f"{split}_x"), getattr(inputs, f"{split}_y"), full=True, bar=bar)
        m = r.pop("_mistakes")
        if split == "test":
            mistakes = {"images": test_images[m.pop("index")].cpu(), **m}
        results[split] = r
    if bar is not None:
        bar.close()
    return results, mistakes


def print_results(summary: dict, log: Callable) -> None:
    """A run's final scores as the terminal shows them: status, best point, per-split table, per-class, times."""
    log(f"status: {summary['status']}" + (f" ({summary['error']})" if summary.get("error") else ""))
    if "test" not in summary:
        return
    log(best_line(summary))
    log(f"{'split':<6} {'accuracy':>9} {'loss':>8} {'precision':>10} {'recall':>8} {'f1':>8}")
    for split in ("train", "val", "test"):
        if (r := summary.get(split)) is None:  # not scored (train.score_train: false)
            continue
        log(f"{split:<6} {fmt(r['accuracy']):>9} {fmt(r['loss']):>8} {r['precision_macro']:10.4f} "
            f"{r['recall_macro']:8.4f} {r['f1_macro']:8.4f}")
    log("test, per class:\n" + metrics.format_per_class(summary["test"], summary["classes"]))
    if cal := summary.get("calibration"):
        log(f"calibration: test ECE {fmt(cal.get('test_ece'))}, {fmt(cal.get('test_ece_calibrated'))} after temperature "
            f"scaling (T = {cal['temperature']:.3f}, fitted on val: NLL {fmt(cal['val_nll'])} -> "
            f"{fmt(cal['val_nll_calibrated'])}; cnnlab predict --calibrated)")
    log(time_line(summary["time"]))


def best_line(summary: dict) -> str:
    """Where best.pt was taken, by the metric that chose it (``train.monitor``), scores rounded:
    ``best (lowest val loss): epoch 6 (step 84), val loss 0.9123, val accuracy 0.5583``."""
    best = summary.get("best") or {}
    monitor = ((summary.get("config") or {}).get("train") or {}).get("monitor") or "val_accuracy"
    order = ("val_loss", "val_accuracy") if monitor == "val_loss" else ("val_accuracy", "val_loss")
    chosen = "lowest val loss" if monitor == "val_loss" else "highest val accuracy"
    epoch = best.get("epoch")
    where = f"epoch {epoch:g}" if isinstance(epoch, (int, float)) else f"epoch {epoch}"
    scores = ", ".join(f"{key.replace('_', ' ')} {fmt(best.get(key))}" for key in order)
    return f"best ({chosen}): {where} (step {best.get('step')}), {scores}"


def time_record(s: TrainState, eval_s: float, resumed: bool = False) -> dict:
    """summary.json's ``time``: where this session's wall time went, in parts that add up to ``total_s``. ``s`` is
    the trainer's state (:class:`cnnlab.training.state.TrainState`); ``eval_s`` the final scoring's time. ``other_s`` is what
    no part timed (mostly recording the environment: library versions, the git commit). After a resume it is None:
    train_s, compile_s and curve_eval_s add up every session, while setup_s, data_s, eval_s and total_s are the
    last session's."""
    p, total_s = s.progress, time.perf_counter() - s.t_start
    parts = {"train_s": p.train_seconds, "curve_eval_s": p.curve_eval_seconds, "eval_s": eval_s,
             "data_s": s.data_seconds, "setup_s": max(0.0, s.t_loop - s.t_start - s.data_seconds),
             "compile_s": p.compile_seconds}
    images = p.step * s.cfg.train.batch_size * s.cfg.train.accumulate  # whole steps (an epoch's last may be short)
    return {**{k: round(v, 3) for k, v in parts.items()}, "total_s": round(total_s, 3),
            "other_s": None if resumed else round(total_s - sum(parts.values()), 3) + 0.0,  # not -0.0
            "train_images_per_s": round(images / p.train_seconds, 1) if p.train_seconds else None,
            "epoch_s": [round(t, 3) for t in p.epoch_seconds], "steps": p.step}


def time_line(t: dict) -> str:
    """The run's ``time:`` line: training, the learning-curve evaluations during it, the final scoring, the rest."""
    parts = [f"train {t['train_s']:.1f} s ({t['train_images_per_s'] or 0:,.0f} img/s)"]
    if t.get("compile_s"):
        parts.append(f"compile {t['compile_s']:.1f} s")
    parts += [f"curve evals {t.get('curve_eval_s') or 0:.1f} s", f"final scoring {t['eval_s']:.1f} s",
              f"data {t['data_s']:.1f} s"]
    if t.get("setup_s") is not None:
        parts.append(f"set-up {t['setup_s']:.1f} s")
    if (t.get("other_s") or 0) >= 0.05:  # shown when it rounds to at least 0.1 s
        parts.append(f"other {t['other_s']:.1f} s")
    resumed = "other_s" in t and t["other_s"] is None  # the parts add up every session, total_s this one
    return "time: " + ", ".join(parts) + f", total {t['total_s']:.1f} s" + (" (this session)" if resumed else "")


def fmt(value, digits: int = 4) -> str:
    """A score as text, ``-`` when there is none (an empty split)."""
    return "-" if value is None else f"{value:.{digits}f}"


