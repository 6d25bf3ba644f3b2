"""The training loop: ``run(config, out_dir) -> summary``, readable top to bottom.

1. Prepare: seed, pick the device, load the data splits onto it (uint8), build
   the model, optimizer, schedule and loss from the registries.
2. Train: each iteration slices a per-epoch random permutation of the training
   split, augments and normalises the batch on the device, and takes one step.
   There is no DataLoader and no per-sample Python; the host waits on the device
   only at evaluation points (and every ``DIVERGENCE_CHECK_EVERY`` steps).
3. Evaluate every ``train.eval_every`` iterations and at each epoch end: append a
   learning-curve point to ``metrics.jsonl``, keep ``best.pt`` by the validation
   metric, write ``last.pt`` (everything needed to resume bit-identically on CPU),
   and apply early stopping.
4. Finish: reload the best weights, score train / validation / test, and write
   ``summary.json``, ``curves.png`` and the report.

A non-finite loss stops the run as ``diverged``; SIGINT/SIGTERM stop it at the
next step boundary as ``interrupted`` after writing ``last.pt``; any other error
leaves ``summary.json`` with status ``failed``. In every case the folder is complete.
"""
from __future__ import annotations

import math
import os
import signal
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cnnlab import data as datamod
from cnnlab import augment, checks, metrics, runs, transfer
from cnnlab.config import Config, ConfigError, dump_yaml
from cnnlab.models import info_of
from cnnlab.results import is_finished
from cnnlab.optim import build_loss, build_optimizer, build_scheduler, lr_of, nll_of

DIVERGENCE_CHECK_EVERY = 50  # iterations between host syncs that look for a non-finite loss
MISCLASSIFIED_KEPT = 32  # test images kept for the report's "most confident mistakes" grid


class RunExistsError(ConfigError):
    """The output folder already holds a run; resume it or pass --force."""


class RunStopped(Exception):
    """Raised inside the loop when a stop signal (SIGINT/SIGTERM) arrived."""


# ----------------------------------------------------------------------------- set-up helpers


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' was asked for but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    if deterministic:
        # Needed for bit-reproducible GPU runs (CUBLAS needs this before its first call).
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True


def autocast_for(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def augmenting(aug) -> bool:
    return bool(aug.crop_padding or aug.flip or aug.brightness or aug.contrast or aug.saturation or aug.hue)


def identity(x: torch.Tensor, generator=None) -> torch.Tensor:
    return x


@torch.inference_mode()
def cached_features(backbone: nn.Module, splits, evaluator: "Evaluator"):
    """Run a frozen backbone once over every split; returns splits of features (same labels)."""
    from types import SimpleNamespace

    backbone.eval()
    out = {}
    for split in ("train", "val", "test"):
        x = getattr(splits, f"{split}_x")
        chunks = []
        for start in range(0, len(x), evaluator.batch_size):
            xb = evaluator.preprocess(x[start:start + evaluator.batch_size], None)
            if evaluator.channels_last:
                xb = xb.contiguous(memory_format=torch.channels_last)
            with autocast_for(evaluator.precision, evaluator.device):
                chunks.append(backbone(xb).float())
        out[f"{split}_x"] = torch.cat(chunks).clone()  # clone: usable outside inference mode
        out[f"{split}_y"] = getattr(splits, f"{split}_y")
    return SimpleNamespace(**out, num_classes=splits.num_classes, classes=splits.classes)


def has_conv(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def prepare_out_dir(out_dir: Path, resume: bool, force: bool) -> None:
    """Refuse to overwrite a run unless asked; --force clears only cnnlab's own files."""
    # A kill while a file was being written leaves its temporary (.last.pt.x1y2.tmp) behind: drop them.
    if (resume or force) and out_dir.is_dir():
        for name in (*runs.RUN_FILES, "report.html", "misclassified.pt"):
            for tmp in out_dir.glob(f".{name}.*tmp"):
                tmp.unlink(missing_ok=True)
    if resume:
        if not (out_dir / "last.pt").exists():
            raise RunExistsError(f"--resume: {out_dir} has no last.pt to resume from")
        return
    if out_dir.exists() and any(out_dir.iterdir()):
        if not force:
            state = "a finished run" if is_finished(out_dir) else "an unfinished run"
            raise RunExistsError(
                f"{out_dir} already holds {state}; pass --resume to continue it, --force to overwrite it, "
                "or choose another --out"
            )
        for name in (*runs.RUN_FILES, "report.html", "misclassified.pt", "train.log"):
            (out_dir / name).unlink(missing_ok=True)


@contextmanager
def stop_on_signals(flag: dict):
    """Turn SIGINT/SIGTERM into a flag the loop checks between steps (main thread only)."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flag.get("stop"):  # a second signal: stop at once
            raise KeyboardInterrupt
        flag["stop"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Evaluator:
    """Scores a model on a split in large batches, optionally with test-time augmentation."""

    preprocess: object
    batch_size: int
    precision: str
    device: torch.device
    output_kind: str
    num_classes: int
    tta: str = "none"
    channels_last: bool = False

    def outputs(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        x = self.preprocess(x, None)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast_for(self.precision, self.device):
            out = model(x).float()
            if self.tta != "none":
                views = [x.flip(3)] if "flip" in self.tta else []  # mirror image (not for digits)
                if "translate" in self.tta:  # one pixel diagonally each way
                    views += [torch.roll(x, shifts=(d, d), dims=(2, 3)) for d in (1, -1)]
                out = self._to_probs(out)
                for view in views:
                    out = out + self._to_probs(model(view).float())
                out = (out / (1 + len(views))).clamp_min(1e-12).log()  # averaged probabilities, as log-probs
        return out

    def _to_probs(self, out: torch.Tensor) -> torch.Tensor:
        if self.output_kind == "probs":
            return out
        if self.output_kind == "log_probs":
            return out.exp()
        return out.softmax(1)

    @torch.inference_mode()
    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, full: bool = False) -> dict:
        """Mean loss and accuracy (and with ``full`` the confusion-matrix metrics and the worst mistakes).

        An empty split (``data.val_size=0``) scores None: there is nothing to measure."""
        if len(x) == 0:
            empty = {"loss": None, "accuracy": None}
            if full:
                cm = torch.zeros(self.num_classes, self.num_classes, dtype=torch.long)
                empty = {**metrics.scores(cm), **empty, "_mistakes": {
                    "index": torch.zeros(0, dtype=torch.long), "true": torch.zeros(0, dtype=torch.long),
                    "pred": torch.zeros(0, dtype=torch.long), "confidence": torch.zeros(0)}}
            return empty
        was_training = model.training
        model.eval()
        kind = "log_probs" if self.tta != "none" else self.output_kind
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float64)
        preds, confs = [], []
        for start in range(0, len(x), self.batch_size):
            xb, yb = x[start:start + self.batch_size], y[start:start + self.batch_size]
            out = self.outputs(model, xb)
            loss_sum += nll_of(out, yb, kind).double().sum()
            preds.append(out.argmax(1))
            if full:
                confs.append(out.float().softmax(1).amax(1) if kind == "logits" else
                             (out.exp() if kind == "log_probs" else out).amax(1))
        transfer.set_train_mode(model, was_training)  # frozen batch norm stays in eval mode
        pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=self.device)
        n = max(1, len(x))
        result = {"loss": float(loss_sum) / n, "accuracy": float((pred == y).sum()) / n}
        if full:
            result = {**metrics.scores(metrics.confusion_matrix(y, pred, self.num_classes)), "loss": result["loss"]}
            wrong = (pred != y).nonzero().squeeze(1)
            conf = torch.cat(confs)[wrong]
            top = wrong[conf.argsort(descending=True)[:MISCLASSIFIED_KEPT]]
            result["_mistakes"] = {"index": top, "true": y[top].cpu(), "pred": pred[top].cpu(),
                                   "confidence": torch.cat(confs)[top].float().cpu()}
        return result


# ----------------------------------------------------------------------------- the run


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
    train_seconds: float = 0.0
    epoch_seconds: list = field(default_factory=list)
    # running training loss / accuracy since the last evaluation (kept so a stop between
    # evaluations resumes with the same learning-curve point)
    accum_loss: float = 0.0
    accum_correct: int = 0
    accum_seen: int = 0


def say(message: str) -> None:
    print(message, flush=True)  # flushed: logs piped to a file show progress as it happens


def run(cfg: Config, out_dir: str | Path, *, resume: bool = False, force: bool = False,
        log=say, report: bool = True) -> dict:
    """Train one study config into ``out_dir`` and return its summary (also in summary.json).

    ``report=False`` leaves the doctor's findings, curves.png and report.html to the caller,
    which calls :func:`cnnlab.report.finish_run` (the CLI and the sweep do)."""
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    prepare_out_dir(out_dir, resume, force)
    tc = cfg.train

    # --- 1. set-up: nothing is written until data and model are ready ---------------------
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    seed_everything(cfg.seed, tc.deterministic)
    t0 = time.perf_counter()
    splits = datamod.load_splits(cfg.data, device)
    data_seconds = time.perf_counter() - t0
    model, model_log = transfer.build_model(cfg, splits.num_classes, splits.in_channels,
                                            image_size=splits.image_size if isinstance(splits.image_size, int) else None)
    model.to(device)
    transfer.apply_finetune(model, tc.finetune, freeze_bn=tc.freeze_bn)
    output_kind = info_of(model).output_kind
    # On CPU, oneDNN's convs are faster in channels_last even in fp32 (train step, 1 thread, measured in
    # one process: LeNet-5 1.4x, mnist_fast 1.7x, ResNet-20 1.24x, airbench 1.23x; mnist_cnn 0.91x).
    channels_last = tc.channels_last if tc.channels_last is not None else (
        has_conv(model) and (tc.precision != "fp32" or device.type == "cpu"))
    if channels_last:
        model.to(memory_format=torch.channels_last)
    model_info = describe_model(model, cfg, splits, device)
    warnings = [*model_log, *config_warnings(cfg, output_kind, device)]

    train_pre = augment.Preprocess(splits, cfg.data, train=True)
    eval_pre = augment.Preprocess(splits, cfg.data, train=False)
    if info_of(model).needs_whitening_init and not resume and cfg.model.init_from is None:
        from cnnlab.models.airbench import init_whitening

        init_whitening(model, eval_pre(splits.train_x[:5000], None))

    step_model = torch.compile(model) if tc.compile else model
    optimizer = build_optimizer(transfer.param_groups(model, cfg.optim), cfg.optim)
    n_train = len(splits.train_y)
    steps_per_epoch = max(1, math.ceil(n_train / tc.batch_size))
    # at least one step for any positive epochs (0.001 epochs of a small set would round to none)
    total_steps = max(1, round(tc.epochs * steps_per_epoch)) if tc.epochs > 0 else 0
    sched_steps = total_steps if cfg.sched.interval == "step" else math.ceil(tc.epochs)
    # refused at load when the data set's size is known; an image folder's only now (ConfigError)
    warnings += checks.check_schedule(cfg, n_train)
    scheduler = build_scheduler(optimizer, cfg.sched, sched_steps)
    loss_fn = build_loss(cfg.loss, splits.num_classes)
    scaler = torch.amp.GradScaler(device.type) if tc.precision == "fp16" and device.type == "cuda" else None
    ema = (torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(tc.ema),
                                               use_buffers=True) if tc.ema else None)
    evaluator = Evaluator(eval_pre, tc.eval_batch_size, tc.precision, device, output_kind, splits.num_classes,
                          tta=tc.tta, channels_last=channels_last)
    aug_gen = torch.Generator(device=device).manual_seed(cfg.seed + 1)
    progress = Progress()

    # A frozen backbone gives every image the same features every epoch (no augmentation, no
    # dropout, frozen batch norm): compute them once and train only the head on them.
    net, inputs = model, splits  # net maps the loop's inputs to outputs
    if ema is None and not augmenting(cfg.data.augment) and tc.finetune != "all":
        backbone, rest = transfer.split_frozen(model, example=eval_pre(splits.train_x[:8], None))
        if backbone is not None:
            t0 = time.perf_counter()
            inputs = cached_features(backbone, splits, evaluator)
            net = step_model = rest
            train_pre = evaluator.preprocess = identity
            evaluator.channels_last = channels_last = False
            warnings.append(f"frozen backbone: features of all {len(splits.train_y) + len(splits.val_y) + len(splits.test_y):,} "
                            f"images computed once ({time.perf_counter() - t0:.1f} s); only the head trains")

    # --- the run folder --------------------------------------------------------------
    out_dir.mkdir(parents=True, exist_ok=True)
    if resume:
        progress = restore(out_dir / "last.pt", model, optimizer, scheduler, ema, aug_gen, device)
        kept = [r for r in runs.read_jsonl(out_dir / "metrics.jsonl") if r["step"] <= progress.step]
        runs.write_jsonl(out_dir / "metrics.jsonl", kept)
        log(f"resuming {out_dir} at step {progress.step}/{total_steps}")
    else:
        runs.write_text(out_dir / "config.yaml", dump_yaml(cfg))
    log(f"── cnnlab run → {out_dir}\n{dump_yaml(cfg)}")
    log(f"data: {splits.source}; train {n_train:,} / val {len(splits.val_y):,} / test {len(splits.test_y):,} "
        f"images of {tuple(splits.train_x.shape[1:])} on {device} (loaded in {data_seconds:.1f} s)")
    log(f"model: {cfg.model.name}, {model_info['params_total']:,} parameters "
        f"({model_info['params_trainable']:,} trainable), {model_info['flops_per_image']:,} FLOPs per image")
    for w in warnings:
        log(f"warning: {w}")

    status, error = "completed", None
    stop = {}
    history = runs.read_jsonl(out_dir / "metrics.jsonl")
    board = tensorboard_writer(out_dir) if tc.tensorboard else None
    try:
        with stop_on_signals(stop):
            status = train_loop(
                cfg, inputs, step_model, net, model, optimizer, scheduler, loss_fn, scaler, ema, evaluator,
                train_pre, aug_gen, progress, total_steps, steps_per_epoch, channels_last, device, out_dir,
                history, board, stop, log)
    except RunStopped:
        status, error = "interrupted", f"stopped by {stop.get('stop', 'a signal')} at step {progress.step}"
    except KeyboardInterrupt:
        status, error = "interrupted", f"interrupted at step {progress.step}"
    except Exception as e:  # noqa: BLE001 - recorded in summary.json, then re-raised
        status, error = "failed", f"{type(e).__name__}: {e}"
        finish(cfg, out_dir, model, net, ema, evaluator, splits, inputs, progress, status, error, model_info,
               warnings, history, t_start, data_seconds, output_kind, log, score=False, report=report)
        raise
    finally:
        if board is not None:
            board.close()
    return finish(cfg, out_dir, model, net, ema, evaluator, splits, inputs, progress, status, error, model_info,
                  warnings, history, t_start, data_seconds, output_kind, log, score=status != "interrupted",
                  report=report)


def train_loop(cfg, splits, step_model, net, model, optimizer, scheduler, loss_fn, scaler, ema, evaluator, train_pre,
               aug_gen, progress, total_steps, steps_per_epoch, channels_last, device, out_dir, history, board, stop,
               log) -> str:
    """Iterate from ``progress.step`` to ``total_steps``; returns the final status.

    ``splits`` holds the loop's inputs (images, or cached features), ``net`` maps them to outputs,
    ``model`` is the whole network whose state goes into the checkpoints."""
    tc = cfg.train
    bs = tc.batch_size
    n_train = len(splits.train_y)
    per_step_sched = scheduler is not None and cfg.sched.interval == "step" and cfg.sched.name != "plateau"
    loss_sum = torch.tensor(progress.accum_loss, device=device, dtype=torch.float32)
    correct = torch.tensor(progress.accum_correct, device=device, dtype=torch.long)
    seen = progress.accum_seen
    perm, perm_epoch = None, -1
    bar = None
    transfer.set_train_mode(model, True)
    t_epoch = time.perf_counter()
    t_mark = time.perf_counter()
    while progress.step < total_steps:
        epoch, i = divmod(progress.step, steps_per_epoch)
        if epoch != perm_epoch:
            # One permutation per epoch from (seed, epoch): resuming mid-epoch rebuilds it exactly.
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
            perm, perm_epoch = torch.randperm(n_train, generator=g).to(device), epoch
            if tc.progress and sys.stderr.isatty():
                from tqdm import tqdm

                bar = tqdm(total=min(steps_per_epoch, total_steps - epoch * steps_per_epoch), initial=i,
                           desc=f"epoch {epoch + 1}", unit="it", leave=False, dynamic_ncols=True)
        idx = perm[i * bs:(i + 1) * bs]
        x = train_pre(splits.train_x[idx], aug_gen)
        y = splits.train_y[idx]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        with autocast_for(tc.precision, device):
            out = step_model(x)
            loss = loss_fn(out, y)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        if per_step_sched:
            scheduler.step()
        progress.step += 1
        loss_sum += loss.detach().float() * len(y)
        correct += (out.detach().argmax(1) == y).sum()
        seen += len(y)
        if bar is not None:
            bar.update(1)

        epoch_end = progress.step % steps_per_epoch == 0 or progress.step == total_steps
        eval_now = epoch_end or (tc.eval_every and progress.step % tc.eval_every == 0)
        if progress.step % DIVERGENCE_CHECK_EVERY == 0 or eval_now:
            if not torch.isfinite(loss_sum):
                log(f"loss became non-finite at step {progress.step}: stopping (diverged)")
                return "diverged"
        if epoch_end:
            progress.epoch_seconds.append(time.perf_counter() - t_epoch)
            t_epoch = time.perf_counter()
            if scheduler is not None and cfg.sched.interval == "epoch" and cfg.sched.name != "plateau":
                scheduler.step()
            if bar is not None:
                bar.close()
                bar = None
        if eval_now:
            progress.train_seconds += time.perf_counter() - t_mark
            row = evaluation_point(cfg, net, ema, evaluator, splits, optimizer, scheduler, progress,
                                   steps_per_epoch, float(loss_sum) / seen, float(correct) / seen)
            history.append(row)
            runs.append_jsonl(out_dir / "metrics.jsonl", row)
            if board is not None:
                write_scalars(board, row)
            log(f"step {row['step']:>6} epoch {row['epoch']:6.2f}  lr {row['lr']:.3g}  train loss "
                f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  val loss {_f(row['val_loss'])} "
                f"acc {_f(row['val_accuracy'])}  ({progress.step * bs / max(progress.train_seconds, 1e-9):,.0f} img/s)")
            loss_sum.zero_()
            correct.zero_()
            seen = progress.accum_loss = progress.accum_correct = progress.accum_seen = 0
            improved = track_best(cfg, row, progress)
            # best.pt before last.pt: a kill between the two resumes from the older last.pt and
            # re-writes the same best.pt, never leaving a best.pt older than last.pt claims.
            state = checkpoint_state(model, optimizer, scheduler, ema, aug_gen, progress, cfg)
            if improved:
                runs.save_checkpoint(out_dir / "best.pt", state)
            runs.save_checkpoint(out_dir / "last.pt", state)
            if row["val_loss"] is not None and not math.isfinite(row["val_loss"]):
                return "diverged"
            if tc.early_stopping.patience and progress.evals_since_best >= tc.early_stopping.patience:
                log(f"early stopping: no improvement in {progress.evals_since_best} evaluations")
                return "early_stopped"
            t_mark = time.perf_counter()
        if stop.get("stop"):
            progress.train_seconds += time.perf_counter() - t_mark
            progress.accum_loss, progress.accum_correct, progress.accum_seen = float(loss_sum), int(correct), seen
            runs.save_checkpoint(out_dir / "last.pt",
                                 checkpoint_state(model, optimizer, scheduler, ema, aug_gen, progress, cfg))
            raise RunStopped
    if bar is not None:
        bar.close()
    return "completed"


def tensorboard_writer(out_dir: Path):
    """A TensorBoard event writer in ``<run>/tensorboard`` (``tensorboard --logdir runs``)."""
    from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package (checked at load)

    return SummaryWriter(str(out_dir / "tensorboard"))


def write_scalars(board, row: dict) -> None:
    """One evaluation point's numbers as train/loss, val/accuracy, lr, ... at its step."""
    for key, value in row.items():
        if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
            board.add_scalar(key.replace("train_", "train/", 1).replace("val_", "val/", 1), value, row["step"])
    board.flush()  # live curves: TensorBoard reads the file while the run goes on


def evaluation_point(cfg, model, ema, evaluator, splits, optimizer, scheduler, progress, steps_per_epoch,
                     train_loss, train_accuracy) -> dict:
    val = evaluator.score(ema.module if ema is not None else model, splits.val_x, splits.val_y)
    if scheduler is not None and cfg.sched.name == "plateau" and val["loss"] is not None and (
            cfg.sched.interval == "step" or progress.step % steps_per_epoch == 0):
        scheduler.step(val["loss"])
    return {
        "step": progress.step,
        "epoch": round(progress.step / steps_per_epoch, 4),
        "lr": lr_of(optimizer),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "elapsed_s": round(progress.train_seconds, 3),
    }


def track_best(cfg, row, progress) -> bool:
    """Update the best-so-far from an evaluation row; True when it improved."""
    monitor = cfg.train.monitor
    if row[monitor] is None:  # no validation split: the latest weights are the ones to keep
        progress.best_step, progress.best_epoch = row["step"], row["epoch"]
        return True
    value = row[monitor] if monitor == "val_accuracy" else -row[monitor]
    delta = cfg.train.early_stopping.min_delta
    if not math.isfinite(value):
        progress.evals_since_best += 1
        return False
    if progress.best_value is None or value > progress.best_value + delta:
        progress.best_value = value
        progress.best_step, progress.best_epoch = row["step"], row["epoch"]
        progress.best_val_accuracy, progress.best_val_loss = row["val_accuracy"], row["val_loss"]
        progress.evals_since_best = 0
        return True
    progress.evals_since_best += 1
    return False


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_state(model, optimizer, scheduler, ema, aug_gen, progress, cfg) -> dict:
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else {},
        "ema": ema.state_dict() if ema is not None else {},
        "step": progress.step,
        "progress": {k: v for k, v in vars(progress).items()},
        "rng": {"torch": torch.get_rng_state(), "augment": aug_gen.get_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
        "config": cfg.to_dict(),
    }


def restore(path, model, optimizer, scheduler, ema, aug_gen, device) -> Progress:
    state = runs.load_checkpoint(path, map_location=device)
    missing = [k for k in ("model", "optimizer", "scheduler", "ema", "rng", "progress") if k not in state]
    if missing:
        raise runs.CheckpointError(f"{path} is not a cnnlab run checkpoint (it has no {', '.join(missing)}); "
                                   "--resume needs the last.pt a run wrote")
    try:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state["scheduler"]:
            scheduler.load_state_dict(state["scheduler"])
        if ema is not None and state["ema"]:
            ema.load_state_dict(state["ema"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        aug_gen.set_state(state["rng"]["augment"].cpu() if device.type == "cpu" else state["rng"]["augment"])
        if state["rng"]["cuda"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        return Progress(**state["progress"])
    except (RuntimeError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise _does_not_fit(path, e) from None


def _does_not_fit(path, e: BaseException) -> runs.CheckpointError:
    """A well-formed checkpoint of another network, optimizer or cnnlab version."""
    text = " ".join(str(e).split())
    return runs.CheckpointError(f"checkpoint {path} does not fit this run's network and settings "
                                f"({type(e).__name__}: {text[:300]}); it was saved by another run or model")


# ----------------------------------------------------------------------------- the end of a run


def finish(cfg, out_dir, model, net, ema, evaluator, splits, inputs, progress, status, error, model_info, warnings, history,
           t_start, data_seconds, output_kind, log, score=True, report=True) -> dict:
    """Score the best weights on every split and write summary.json, curves.png and the report."""
    t0 = time.perf_counter()
    results = {}
    mistakes = None
    if score:
        best = out_dir / "best.pt"
        if best.exists():
            state = runs.load_checkpoint(best, map_location=evaluator.device)
            model.load_state_dict(state["model"])
            if ema is not None and state["ema"]:
                ema.load_state_dict(state["ema"])
        scored = ema.module if ema is not None else net
        for split in ("train", "val", "test"):
            r = evaluator.score(scored, getattr(inputs, f"{split}_x"), getattr(inputs, f"{split}_y"), full=True)
            m = r.pop("_mistakes")
            if split == "test":
                mistakes = {"images": splits.test_x[m.pop("index")].cpu(), **m}
            results[split] = r
        torch.save(mistakes, out_dir / ".misclassified.pt.tmp")
        os.replace(out_dir / ".misclassified.pt.tmp", out_dir / "misclassified.pt")
    eval_seconds = time.perf_counter() - t0
    images = progress.step * cfg.train.batch_size
    summary = {
        "status": status,
        "error": error,
        "name": cfg.name,
        "seed": cfg.seed,
        "config": cfg.to_dict(),
        "classes": list(splits.classes),
        "data_source": splits.source,
        "best": {"epoch": progress.best_epoch, "step": progress.best_step,
                 "val_accuracy": progress.best_val_accuracy, "val_loss": progress.best_val_loss},
        **results,
        "final_train_loss": history[-1]["train_loss"] if history else None,
        "model": model_info,
        "time": {"train_s": round(progress.train_seconds, 3), "eval_s": round(eval_seconds, 3),
                 "data_s": round(data_seconds, 3), "total_s": round(time.perf_counter() - t_start, 3),
                 "train_images_per_s": round(images / progress.train_seconds, 1) if progress.train_seconds else None,
                 "epoch_s": [round(s, 3) for s in progress.epoch_seconds], "steps": progress.step},
        "warnings": warnings,
        "env": runs.environment(evaluator.device),
    }
    runs.write_json(out_dir / "summary.json", summary)
    print_results(summary, log)
    if report:  # the single reporting hook until callers finish runs themselves (report=False)
        from cnnlab.report import finish_run

        summary = finish_run(out_dir, log=log, html=True) or summary
    return summary


def print_results(summary, log) -> None:
    log(f"status: {summary['status']}" + (f" ({summary['error']})" if summary.get("error") else ""))
    if "test" not in summary:
        return
    log(f"best: epoch {summary['best']['epoch']} (step {summary['best']['step']}), "
        f"val accuracy {summary['best']['val_accuracy']}")
    log(f"{'split':<6} {'accuracy':>9} {'loss':>8} {'precision':>10} {'recall':>8} {'f1':>8}")
    for split in ("train", "val", "test"):
        s = summary[split]
        log(f"{split:<6} {_f(s['accuracy']):>9} {_f(s['loss']):>8} {s['precision_macro']:10.4f} "
            f"{s['recall_macro']:8.4f} {s['f1_macro']:8.4f}")
    log("test, per class:\n" + metrics.format_per_class(summary["test"], summary["classes"]))
    t = summary["time"]
    log(f"time: train {t['train_s']:.1f} s ({t['train_images_per_s'] or 0:,.0f} img/s), eval {t['eval_s']:.1f} s, "
        f"data {t['data_s']:.1f} s, total {t['total_s']:.1f} s")


def _f(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def describe_model(model, cfg, splits, device) -> dict:
    from cnnlab.summary import summarize

    info = summarize(model, splits.input_shape, device=device)
    return {"name": cfg.model.name, "output_kind": getattr(model, "output_kind", "logits"), **info}


def config_warnings(cfg, output_kind, device) -> list[str]:
    out = []
    if output_kind == "probs" and cfg.loss.name == "cross_entropy":
        out.append("the model ends in a softmax and is trained with cross_entropy, which applies log-softmax "
                   "again (a double softmax): gradients shrink and training slows; set model.softmax_output=false")
    if cfg.train.precision == "fp16" and device.type == "cpu":
        out.append("train.precision=fp16 on a CPU is emulated and very slow; use bf16")
    return out


# ----------------------------------------------------------------------------- re-evaluation


def evaluate_run(run_dir: Path, splits: list[str] = ("test",), checkpoint: str = "best.pt") -> dict:
    """Score a run's checkpoint again on the chosen splits (``cnnlab eval``)."""
    from cnnlab.loader import load_config

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    for s in splits:
        if s not in ("train", "val", "test"):
            raise ConfigError(f"--split: {s!r} is not a split; use train, val or test")
    device = pick_device(cfg.train.device)
    data = datamod.load_splits(cfg.data, device)
    model, _ = transfer.build_model(cfg.model_copy(update={"model": cfg.model.model_copy(
        update={"init_from": None, "pretrained": None, "weights_path": None})}), data.num_classes, data.in_channels)
    model.to(device)
    state = runs.load_checkpoint(run_dir / checkpoint, map_location=device)
    try:
        if cfg.train.ema and state.get("ema"):
            ema_model = torch.optim.swa_utils.AveragedModel(model, use_buffers=True)
            ema_model.load_state_dict(state["ema"])
            model = ema_model.module
        else:
            model.load_state_dict(state["model"])
    except (RuntimeError, ValueError, KeyError, TypeError) as e:
        raise _does_not_fit(run_dir / checkpoint, e) from None
    evaluator = Evaluator(augment.Preprocess(data, cfg.data, train=False), cfg.train.eval_batch_size,
                          cfg.train.precision, device, info_of(model).output_kind, data.num_classes,
                          tta=cfg.train.tta)
    result = {"run_dir": str(run_dir), "checkpoint": checkpoint, "step": state.get("step")}
    lines = [f"{run_dir} / {checkpoint} (step {state.get('step')})"]
    for s in splits:
        r = evaluator.score(model, getattr(data, f"{s}_x"), getattr(data, f"{s}_y"), full=True)
        r.pop("_mistakes")
        result[s] = r
        lines.append(f"{s}: accuracy {r['accuracy']:.4f}, loss {r['loss']:.4f}, f1_macro {r['f1_macro']:.4f}")
        lines.append(metrics.format_per_class(r, list(data.classes)))
    result["text"] = "\n".join(lines)
    return result
