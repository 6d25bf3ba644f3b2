"""The training loop: ``run(config, out_dir) -> summary``, readable top to bottom.

1. :func:`set_up`: seed, load the data splits onto the device (uint8), build the model, optimizer,
   schedule and loss from the registries, gathered in one :class:`~cnnlab.training.state.TrainState` (whose saved
   form, :class:`~cnnlab.training.state.Checkpoint`, is declared beside it).
2. :func:`train_loop`: each iteration slices a per-epoch random permutation of the training split,
   augments and normalises the batch on the device, and takes one step. No DataLoader, no per-sample
   Python; the host waits on the device only at evaluation points (and every ``DIVERGENCE_CHECK_EVERY`` steps).
3. :func:`evaluation_point`, every ``train.eval_every`` iterations and at each epoch end: a learning-curve
   row in ``metrics.jsonl``, ``best.pt`` by the validation metric, ``last.pt`` (enough to resume
   bit-identically), early stopping.
4. :func:`finish`: score the best weights on val / test (and train: train.score_train), write ``summary.json``. The
   doctor, ``curves.png``, the report and the uploads are the caller's (``cnnlab.lifecycle``).

A non-finite loss stops the run as ``diverged``; SIGINT/SIGTERM stop it at the next step boundary as
``interrupted`` after writing ``last.pt``; any other error leaves ``summary.json`` with status ``failed``.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from cnnlab import runs
from cnnlab.config import rules as checks
from cnnlab.training import resuming
from cnnlab.training import tracking
from cnnlab.models import transfer
from cnnlab import data as datamod
from cnnlab.data import splits as data_splits
from cnnlab.data.augment import Preprocess, no_preprocessing, preprocess_record
from cnnlab.data.batches import train_batches
from cnnlab.config.schema import Config, config_diff_lines, dump_yaml
from cnnlab.training.calibration import calibrate_run
from cnnlab.training.scoring import Evaluator, final_splits, fmt, print_results, score_splits, time_record
from cnnlab.models import info_of
from cnnlab.training.optim import Schedule, build_loss, build_optimizer, build_schedule, class_weights, lrs_of
from cnnlab.runs import is_finished
from cnnlab.training.runtime import (EMA, Compute, RunStopped, failure_text, make_scaler, pick_device, plan_compute, run_flags,
                            seed_everything, stop_on_signals, tf32_flags)
from cnnlab.training.state import Checkpoint, TrainState
from cnnlab.training.step import build_step, drops_last, steps_per_epoch
from cnnlab.models.layers import summarize

DIVERGENCE_CHECK_EVERY = 50  # iterations between host syncs that look for a non-finite loss


def say(message: str) -> None:
    print(message, flush=True)  # flushed: logs piped to a file show progress as it happens


# ----------------------------------------------------------------------------- the run


def run(cfg: Config, out_dir: str | Path, *, resume: bool = False, force: bool = False, log=say,
        verbose: bool = False, trackers: tuple = (), resume_from: str | Path = "last") -> dict:
    """Train ``cfg`` into ``out_dir``; returns the summary (also summary.json). One process trains a run folder at
    a time (its lock); a resume may change only what cnnlab.training.resuming allows, and continues from
    ``resume_from`` (last, best or a checkpoint file's path). ``verbose``: log all the config.
    ``trackers``: :mod:`cnnlab.training.tracking` objects told of each evaluation point, besides the config's own."""
    t_start, out_dir = time.perf_counter(), Path(out_dir)
    with runs.FolderLock(out_dir), run_flags(cfg.train), tf32_flags(cfg.train) as tf32:  # for this run only
        resume = runs.prepare_out_dir(out_dir, resume, force, finished=is_finished(out_dir))
        source = resuming.checkpoint_path(out_dir, resume_from) if resume else None
        changes = resuming.check(cfg, out_dir, source) if resume else None  # refused before any data is read
        s = set_up(cfg, out_dir, resume, log)  # nothing is written until data and model are ready
        s.t_start, s.tf32 = t_start, tf32
        open_run_folder(s, changes, verbose, trackers, source)
        status, error, stop = "completed", None, {}
        try:
            with stop_on_signals(stop):
                status = train_loop(s, stop)
        except RunStopped:
            status, error = "interrupted", f"stopped by {stop.get('stop', 'a signal')} at step {s.progress.step}"
        except KeyboardInterrupt:
            status, error = "interrupted", f"interrupted at step {s.progress.step}"
        except Exception as e:  # noqa: BLE001 - recorded in summary.json, then re-raised
            finish(s, "failed", failure_text(e, cfg.train), score=False, resumed=resume)
            raise
        return finish(s, status, error or s.stopped_by, score=status != "interrupted", resumed=resume)


def set_up(cfg: Config, out_dir: Path, resume: bool, log: Callable) -> TrainState:
    """Seed, load the data, build the network and what trains it (the order fixes who draws which random numbers)."""
    tc = cfg.train
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = pick_device(tc.device)
    seed_everything(cfg.seed)
    t0 = time.perf_counter()
    saved = data_splits.saved_record(out_dir) if resume else None  # an image folder's split, as saved
    splits = datamod.load_splits(cfg.data, device, saved=saved)
    data_seconds = time.perf_counter() - t0
    checks.check_loaded_size(cfg, splits.image_size)  # an image folder's size is known only now
    model, model_log = transfer.build_model(cfg, splits.num_classes, splits.in_channels,
                                            image_size=splits.image_size)
    model.to(device)
    transfer.apply_finetune(model, tc.finetune, freeze_bn=tc.freeze_bn)
    info = info_of(model)
    compute = plan_compute(tc, model, device)  # train.precision / channels_last resolved for this device
    if channels_last := compute.channels_last:
        model.to(memory_format=torch.channels_last)
    model_info = {"name": cfg.model.name, "output_kind": info.output_kind,
                  **summarize(model, splits.input_shape, device=device)}
    # a schedule that cannot act over the run: refused at load when the data set's size is known, else here
    warnings = [*model_log, *checks.config_warnings(cfg, info.output_kind, device),
                *checks.check_schedule(cfg, len(splits.train_y))]

    eval_pre = Preprocess(splits, cfg.data, train=False)
    if info.needs_whitening_init and not resume and cfg.model.init_from is None:
        from cnnlab.models.airbench import init_whitening

        init_whitening(model, eval_pre(splits.train_x[:5000], None))

    scaler = make_scaler(compute.precision, device)
    weights = class_weights(cfg.loss.class_weights, splits.train_y, splits.num_classes)  # loss.class_weights
    optimizer = build_optimizer(transfer.param_groups(model, cfg.optim), cfg.optim, fused=True, scaled=bool(scaler))
    drop_last = drops_last(tc.drop_last, tc.compile, len(splits.train_y), tc.batch_size)
    spe = steps_per_epoch(len(splits.train_y), tc.batch_size, drop_last, tc.accumulate)  # optimizer steps
    # at least one step for any positive epochs (0.001 epochs of a small set would round to none)
    total_steps = max(1, round(tc.epochs * spe)) if tc.epochs > 0 else 0
    ema = EMA(model, tc.ema, device) if tc.ema else None  # no host sync per update
    evaluator = Evaluator(eval_pre, tc.eval_batch_size, compute.precision, device, info.output_kind, splits.num_classes,
                          tta=tc.tta, channels_last=channels_last)
    s = TrainState(
        cfg=cfg, out_dir=out_dir, device=device, splits=splits, model=model,
        net=model, inputs=(train_pre := Preprocess(splits, cfg.data, train=True)).prepared(splits, cfg.seed),
        drop_last=drop_last, train_pre=train_pre, channels_last=channels_last,
        optimizer=optimizer, schedule=build_schedule(optimizer, cfg.sched, total_steps, tc.epochs),
        loss_fn=build_loss(cfg.loss, splits.num_classes, weights),
        preprocess=preprocess_record(splits, cfg.data, tc.tta),
        scaler=scaler, compute=compute,
        ema=ema, aug_gen=torch.Generator(device=device).manual_seed(cfg.seed + 1), mixer=train_pre.mixer,
        evaluator=evaluator,
        scored=ema.module if ema is not None else model, eval_inputs=splits, steps_per_epoch=spe,
        total_steps=total_steps, log=log, model_info=model_info, warnings=warnings, data_seconds=data_seconds)
    if ema is None and not s.train_pre.random and tc.finetune != "all":
        train_head_on_cached_features(s)
    static = drop_last or len(splits.train_y) % tc.batch_size == 0 or len(splits.train_y) < tc.batch_size
    s.train_step = build_step(s, tc.compile, static)
    return s


def train_head_on_cached_features(s: TrainState) -> None:
    """A frozen backbone gives every image the same features every epoch (no augmentation, no
    dropout, frozen batch norm): compute them once and train only the head on them."""
    backbone, head = transfer.split_frozen(s.model, example=s.evaluator.preprocess(s.splits.train_x[:8], None))
    if backbone is None:
        return
    t0 = time.perf_counter()
    s.inputs = transfer.cached_features(backbone, s.splits, s.evaluator)
    s.net, s.train_pre, s.channels_last = head, no_preprocessing, False
    if s.cfg.train.tta == "none":  # test-time augmentation transforms images: it scores the whole network
        s.scored, s.eval_inputs = head, s.inputs
        s.evaluator = Evaluator(no_preprocessing, s.evaluator.batch_size, s.evaluator.precision, s.device,
                                s.evaluator.output_kind, s.evaluator.num_classes)
    n = len(s.splits.train_y) + len(s.splits.val_y) + len(s.splits.test_y)
    s.warnings.append(f"frozen backbone: features of all {n:,} images computed once "
                      f"({time.perf_counter() - t0:.1f} s); only the head trains")


def open_run_folder(s: TrainState, changes: dict | None, verbose: bool = False, trackers: tuple = (),
                    source: Path | None = None) -> None:
    """Write config.yaml (or, resuming with these ``changes``, restore the checkpoint ``source`` (last.pt by
    default), record the changes and drop the curve points after it) and say what runs."""
    cfg, splits, log, info = s.cfg, s.splits, s.log, s.model_info
    metrics_file = s.out_dir / "metrics.jsonl"
    s.out_dir.mkdir(parents=True, exist_ok=True)
    if changes is not None:
        source = source or s.out_dir / "last.pt"
        checkpoint = Checkpoint.load(source, map_location=s.device)
        checkpoint.restore(s, source)
        if source.resolve() != (s.out_dir / "last.pt").resolve():  # the run goes on from there: last.pt says so
            checkpoint.save(s.out_dir / "last.pt")
        resuming.record(s, changes, source)
        runs.write_jsonl(metrics_file, [r for r in runs.read_jsonl(metrics_file) if r["step"] <= s.progress.step])
        log(f"resuming {s.out_dir} at step {s.progress.step}/{s.total_steps} from {source.name}")
    else:
        runs.write_text(s.out_dir / "config.yaml", dump_yaml(cfg))
        data_splits.save_record(s.out_dir, splits.record())  # image folders: each split's files
        if (folds := data_splits.fold_record(splits, cfg.data)) is not None:  # data.folds: this fold's images
            runs.write_json(s.out_dir / "fold.json", folds)
    log(f"── cnnlab run → {s.out_dir}\n" + (dump_yaml(cfg) if verbose else "\n".join(config_diff_lines(cfg))))
    log(f"data: {splits.source}; train {len(splits.train_y):,} / val {len(splits.val_y):,} / test "
        f"{len(splits.test_y):,} images of {tuple(splits.train_x.shape[1:])} on {s.device}{splits.placement_note} "
        f"(loaded in {s.data_seconds:.1f} s)")
    log(f"model: {cfg.model.name}, {info['params_total']:,} parameters ({info['params_trainable']:,} trainable), "
        f"{info['flops_per_image']:,} FLOPs per image\n{s.compute.line()}")
    for w in s.warnings:
        log(f"warning: {w}")
    s.history = runs.read_jsonl(metrics_file)
    s.trackers = [*tracking.trackers_for(cfg, s.out_dir, log=log), *trackers]


# ----------------------------------------------------------------------------- the loop


def train_loop(s: TrainState, stop: dict) -> str:
    """Step from ``s.progress.step`` to ``s.total_steps``; returns the final status."""
    tc, p, bs = s.cfg.train, s.progress, s.cfg.train.batch_size
    s.loss_sum = torch.tensor(p.accum_loss, device=s.device, dtype=torch.float32)
    s.correct = torch.tensor(p.accum_correct, device=s.device, dtype=torch.long)
    s.seen, bar = p.accum_seen, None
    transfer.set_train_mode(s.model, True)
    t_epoch = s.t_mark = s.t_loop = time.perf_counter()
    while p.step < s.total_steps:
        epoch, i = divmod(p.step, s.steps_per_epoch)
        bar = progress_bar(s, epoch, i)
        # One permutation per epoch from (seed, epoch): resuming mid-epoch rebuilds it exactly. A step takes
        # train.accumulate batches of it; stops and checkpoints fall between steps, never inside one.
        batches = train_batches(s.inputs.train_x, s.inputs.train_y, bs, s.cfg.seed, epoch, start=i * tc.accumulate,
                                drop_last=s.drop_last, sampler=s.cfg.data.sampler)
        for group in step_groups(batches, tc.accumulate):
            if p.step == s.total_steps:  # a fraction of an epoch ends here
                break
            n = sum(len(y) for _, y in group)
            prepared = (prepare(s, x, y, epoch) for x, y in group)  # augmented one batch at a time
            compile_s = s.train_step.accumulated(prepared, n, s.loss_sum, s.correct, p.step)  # > 0 once if compiled
            p.train_seconds, p.compile_seconds = p.train_seconds - compile_s, p.compile_seconds + compile_s
            s.schedule.after_step()
            p.step += 1
            s.seen += n
            if bar is not None:
                bar.update(1)

            epoch_end = p.step % s.steps_per_epoch == 0 or p.step == s.total_steps
            eval_now = epoch_end or (tc.eval_every and p.step % tc.eval_every == 0)
            if (p.step % DIVERGENCE_CHECK_EVERY == 0 or eval_now) and not torch.isfinite(s.loss_sum):
                s.log(f"loss became non-finite at step {p.step}: stopping (diverged)")
                return "diverged"
            if epoch_end:
                p.epoch_seconds.append(time.perf_counter() - t_epoch)
                t_epoch = time.perf_counter()
                s.schedule.after_epoch()
                bar = bar.close() if bar is not None else None
            t_eval, status = time.perf_counter(), evaluation_point(s) if eval_now else None
            p.curve_eval_seconds += time.perf_counter() - t_eval if eval_now else 0.0  # early returns count too
            if status:
                return status
            if stop.get("stop"):
                p.train_seconds += time.perf_counter() - s.t_mark
                p.accum_loss, p.accum_correct, p.accum_seen = float(s.loss_sum), int(s.correct), s.seen
                Checkpoint.of(s).save(s.out_dir / "last.pt")
                raise RunStopped
    if bar is not None:
        bar.close()
    return "completed"


def step_groups(batches, k: int):
    """Lists of ``k`` consecutive batches (the last one shorter when the batches run out): one optimizer step each."""
    group = []
    for batch in batches:
        group.append(batch)
        if len(group) == k:
            yield group
            group = []
    if group:
        yield group


def prepare(s: TrainState, x: torch.Tensor, y: torch.Tensor, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A stored training batch augmented and normalised (in the memory format the model runs in), and its
    targets: the labels, or with mixup / cutmix (``s.mixer``) the mixed batch's class probabilities."""
    x = s.train_pre(x, s.aug_gen, epoch)
    if s.mixer is not None:
        x, y = s.mixer(x, y, s.aug_gen)
    return (x.contiguous(memory_format=torch.channels_last) if s.channels_last else x), y


def evaluation_point(s: TrainState) -> str | None:
    """Score the validation split, record a learning-curve point, write the checkpoints; returns
    a final status when the run must stop here (diverged, early stopped), else None."""
    p, tc = s.progress, s.cfg.train
    p.train_seconds += time.perf_counter() - s.t_mark
    val = s.evaluator.score(s.scored, s.eval_inputs.val_x, s.eval_inputs.val_y)
    s.schedule.after_eval(val["loss"], epoch_end=p.step % s.steps_per_epoch == 0)
    row = {"step": p.step, "epoch": round(p.step / s.steps_per_epoch, 4), **lrs_of(s.optimizer),
           "train_loss": float(s.loss_sum) / s.seen, "train_accuracy": float(s.correct) / s.seen,
           "val_loss": val["loss"], "val_accuracy": val["accuracy"], "elapsed_s": round(p.train_seconds, 3)}
    s.history.append(row)
    runs.append_jsonl(s.out_dir / "metrics.jsonl", row)
    s.log(f"step {row['step']:>6} epoch {row['epoch']:6.2f}  lr {row['lr']:.3g}  train loss "
          f"{row['train_loss']:.4f} acc {row['train_accuracy']:.4f}  val loss {fmt(row['val_loss'])} "
          f"acc {fmt(row['val_accuracy'])}  ({p.step * tc.batch_size * tc.accumulate / max(p.train_seconds, 1e-9):,.0f} img/s)")
    s.loss_sum.zero_(), s.correct.zero_()
    s.seen = p.accum_loss = p.accum_correct = p.accum_seen = 0
    improved = track_best(s.cfg, row, p)
    # best.pt before last.pt: a kill between the two resumes from the older last.pt and
    # re-writes the same best.pt, never leaving a best.pt older than last.pt claims.
    state = Checkpoint.of(s)
    if improved:
        state.save(s.out_dir / "best.pt")
    state.save(s.out_dir / "last.pt")
    if row["val_loss"] is not None and not math.isfinite(row["val_loss"]):
        return "diverged"
    if tc.early_stopping.patience and p.evals_since_best >= tc.early_stopping.patience:
        s.log(f"early stopping: no improvement in {p.evals_since_best} evaluations")
        return "early_stopped"
    # every tracker is told of the point; one may stop the run (a Ray Tune scheduler pruning a hopeless one, a
    # caller's callback): the first to ask names the status
    stops = [(tracker, status) for tracker in s.trackers if (status := tracker.on_eval(row))]
    if stops:
        tracker, status = stops[0]
        s.stopped_by = f"stopped by {getattr(tracker, 'name', type(tracker).__name__)} at step {p.step} ({status})"
        s.log(s.stopped_by)
        return status
    s.t_mark = time.perf_counter()


def track_best(cfg: Config, row: dict, progress: Progress) -> bool:
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


# ----------------------------------------------------------------------------- the end of a run


def finish(s: TrainState, status: str, error: str | None, score: bool = True, resumed: bool = False) -> dict:
    """Score the best weights on every split and write summary.json (and misclassified.pt)."""
    t0 = time.perf_counter()
    results, calibration = {}, None
    if score:
        if (s.out_dir / "best.pt").exists():
            Checkpoint.load(s.out_dir / "best.pt").restore_weights(s, s.out_dir / "best.pt")
        results, mistakes = score_splits(s.evaluator, s.scored, s.eval_inputs, s.splits.test_x, s.cfg.train.progress,
                                         final_splits(s.cfg.train.score_train))
        runs.save_misclassified(s.out_dir, mistakes)
        calibration = calibrate_run(s.evaluator, s.scored, s.eval_inputs)  # temperature scaling, fitted on val
    eval_seconds = time.perf_counter() - t0
    p, cfg = s.progress, s.cfg
    summary = {
        "status": status, "error": error, "name": cfg.name, "seed": cfg.seed, "config": cfg.to_dict(),
        "classes": list(s.splits.classes), "data_source": s.splits.source, "data_placement": s.splits.placement,
        "preprocess": s.preprocess, "best": {"epoch": p.best_epoch, "step": p.best_step,
                                             "val_accuracy": p.best_val_accuracy, "val_loss": p.best_val_loss},
        **results, "calibration": calibration,
        "final_train_loss": s.history[-1]["train_loss"] if s.history else None,
        "model": s.model_info,
        "step": {**s.train_step.record(s.drop_last), "tf32": s.tf32}, **s.compute.record(),
        "warnings": s.warnings, "resumed": p.resumes, "env": runs.environment(s.device),
        "time": time_record(s, eval_seconds, resumed),  # last: the time to record the rest counts too
    }
    runs.write_json(s.out_dir / "summary.json", summary)
    print_results(summary, s.log)
    for tracker in s.trackers:  # told last, closed in any case (finish is called for failed runs too)
        tracker.on_finish(summary)
        tracker.close()
    return summary


# ----------------------------------------------------------------------------- small helpers


def progress_bar(s: TrainState, epoch: int, done: int):
    """A tqdm bar for one epoch when asked for (train.progress) and stderr is a terminal, else None."""
    if not (s.cfg.train.progress and sys.stderr.isatty()):
        return None
    return tqdm(total=min(s.steps_per_epoch, s.total_steps - epoch * s.steps_per_epoch), initial=done,
                desc=f"epoch {epoch + 1}", unit="it", leave=False, dynamic_ncols=True)
