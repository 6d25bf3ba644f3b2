"""Run doctor: read a finished (or stopped) run's learning curves and name what went wrong.

``diagnose`` looks only at the evaluation history (the rows of ``metrics.jsonl``),
the run summary, the number of classes and how the model's output meets the loss.
Each rule turns one recognisable pattern (a loss that blew up, accuracy stuck at
chance, a train/validation gap that keeps widening, a curve still climbing when
training stopped...) into a finding ``{code, severity, message}`` whose message
says what was seen, with numbers, and what to try. Every threshold sits in the
block of named constants below, so a rule's sensitivity is changed in one place.
The rules are heuristics: a finding is a prompt to look at the curves, not a verdict.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from cnnlab import runs
from cnnlab.reporting import results
from cnnlab.config.rules import double_softmax

# ----------------------------------------------------------------------------- thresholds

# stuck_at_chance: the best validation accuracy after the first epoch is at chance by the one rule
# compare uses too (cnnlab.reporting.results.at_chance: within results.CHANCE_MARGIN of 1/classes).
CHANCE_MARGIN = results.CHANCE_MARGIN
# Evaluations at or after this many epochs count for stuck_at_chance (earlier ones may still be warming up).
CHANCE_AFTER_EPOCHS = 1.0

# overfitting: at the last evaluation, train accuracy exceeds validation accuracy by more than this...
OVERFIT_ACC_GAP = 0.05
# ...and the validation loss has risen this fraction above its lowest value.
OVERFIT_VAL_LOSS_RISE = 0.10

# under_trained: the validation accuracy gained at least this much over the last evaluations...
UNDER_TRAINED_MIN_GAIN = 0.005
# ...looking back this many evaluations (the last row against the one this many before it).
UNDER_TRAINED_WINDOW = 2

# early_best: early stopping with this patience (evaluations without improvement) is what we compare to...
EARLY_STOP_PATIENCE = 2
# ...and the finding is raised when it would have saved at least this fraction of the training time.
EARLY_BEST_MIN_SAVING = 0.25

# lr_too_high: within the first evaluations, the train loss rises above the first one by this fraction.
LR_HIGH_FIRST_EVALS = 4
LR_HIGH_RISE = 0.10

# lr_too_low: over the whole run the train loss fell by less than this fraction of its first value...
LR_LOW_MIN_DROP = 0.05
# ...while the model still fits less than this share of its training data (a converged model is flat too).
LR_LOW_MAX_TRAIN_ACC = 0.95
# loss_rose: the last train loss is at least this many times the first evaluation's, or the uniform guess's
# (ln classes: what predicting every class equally likely scores). A run can end "completed" with every loss
# finite and its network worse than guessing (a bf16 airbench run once ended at loss 17.4 from 2.3).
LOSS_ROSE_FACTOR = 2.0
# Rules that look at a trend need at least this many evaluations.
MIN_EVALS_FOR_TREND = 3

SEVERITIES = ("info", "warning", "error")


# ----------------------------------------------------------------------------- helpers


def _num(value: Any) -> Optional[float]:
    """A metric as a float; NaN/inf strings of older run folders ('nan', 'inf') come back as floats too."""
    return results.number(value, finite=False)


def _finite(value: Any) -> bool:
    v = _num(value)
    return v is not None and math.isfinite(v)


def _series(history: list[dict], key: str) -> list[float]:
    """The finite values of one metric, in evaluation order (missing or non-finite values dropped)."""
    return [float(_num(r.get(key))) for r in history if _finite(r.get(key))]


def _finding(code: str, severity: str, message: str) -> dict:
    assert severity in SEVERITIES, severity
    return {"code": code, "severity": severity, "message": message}


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def _setting(summary: dict, dotted: str, default: Any = None) -> Any:
    """One field of the run's own config (summary.json's ``config``), ``default`` when it is not there."""
    node: Any = summary.get("config") or {}
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _patience(summary: dict) -> int:
    value = _num(_setting(summary, "train.early_stopping.patience", 0))
    return int(value) if value is not None and math.isfinite(value) else 0


def _more_epochs_command(summary: dict, run_dir: Optional[Path]) -> str:
    """The command that trains this run's setting for longer, with the number of epochs to ask for.

    A cosine or one-cycle schedule spans the whole run, so a resume may not extend it (cnnlab.training.resuming):
    the command is then a new run from the run's own config with more epochs."""
    epochs = _num(_setting(summary, "train.epochs"))
    more = f"{2 * epochs:g}" if epochs is not None and math.isfinite(epochs) and epochs > 0 else "N"
    where = str(run_dir) if run_dir is not None else "RUN_DIR"
    sched = _setting(summary, "sched.name")
    if sched in ("cosine", "onecycle"):
        return (f"under sched.name={sched} the schedule spans the whole run, so --resume cannot extend it: start a new "
                f"run, e.g. cnnlab train {Path(where) / 'config.yaml'} train.epochs={more} --out {where}-{more}ep")
    return f"continue it with cnnlab train --resume {where} train.epochs={more}"


# ----------------------------------------------------------------------------- the rules


def _non_finite_loss(row: dict, split: str) -> bool:
    """A loss that is NaN/inf: as a float or string, or (files write non-finite numbers as null)
    a null loss beside a recorded accuracy of the same split."""
    loss = row.get(f"{split}_loss")
    if loss is None:
        return _finite(row.get(f"{split}_accuracy"))
    return not _finite(loss)


def _precision_used(summary: dict) -> Optional[str]:
    return ((summary.get("precision") or {}).get("used")  # train.precision as resolved (auto -> bf16/fp16/fp32)
            or ((summary.get("config") or {}).get("train") or {}).get("precision"))  # runs from before auto


def _diverged(history: list[dict], summary: dict) -> list[dict]:
    bad = [r for r in history if _non_finite_loss(r, "train") or _non_finite_loss(r, "val")]
    if not bad and summary.get("status") != "diverged":
        return []
    where = f" at step {bad[0].get('step')} (epoch {bad[0].get('epoch')})" if bad else ""
    used = _precision_used(summary)
    return [_finding(
        "diverged", "error",
        f"the loss became non-finite (NaN or infinite){where}; training cannot recover from that. "
        "Lower optim.lr (by 3-10x), add a warm-up (sched.warmup_steps), use batch normalisation"
        + (f", or train in fp32 (train.precision=fp32; this run used {used})." if used in ("fp16", "bf16") else "."))]


def _loss_rose(history: list[dict], summary: dict, num_classes: int) -> list[dict]:
    loss = _series(history, "train_loss")
    if not loss:
        return []
    guess = math.log(num_classes) if num_classes >= 2 else None
    against = [(f"the first evaluation's {loss[0]:.4g}", loss[0])] if len(loss) >= 2 else []
    against += [(f"the {guess:.4g} of guessing every class equally likely (ln {num_classes})", guess)] if guess else []
    risen = [(what, ref) for what, ref in against if ref > 0 and loss[-1] >= LOSS_ROSE_FACTOR * ref]
    if not risen:
        return []
    what, ref = risen[0]
    used = _precision_used(summary)
    return [_finding(
        "loss_rose", "error",
        f"the train loss ended at {loss[-1]:.4g}, {loss[-1] / ref:.1f}x {what}: whatever the status says, the "
        "network got worse as it trained. Lower optim.lr or add a warm-up (sched.warmup_steps)"
        + (f"; this run used {used}: train the same run with train.precision=fp32 to see whether the precision "
           "is the cause." if used in ("fp16", "bf16") else "."))]


def _stuck_at_chance(history: list[dict], num_classes: int) -> list[dict]:
    if num_classes < 2:
        return []
    later = [r for r in history
             if _finite(r.get("val_accuracy")) and (_num(r.get("epoch")) or 0.0) >= CHANCE_AFTER_EPOCHS - 1e-9]
    if not later:
        return []
    best = max(float(_num(r["val_accuracy"])) for r in later)
    chance = results.chance_level(num_classes)
    if not results.at_chance(best, num_classes):
        return []
    return [_finding(
        "stuck_at_chance", "error",
        f"validation accuracy stayed at {_pct(best)} after the first epoch, about chance for {num_classes} "
        f"classes ({_pct(chance)}): the network is not learning. Typical causes: a learning rate far too high "
        "(dead units) or far too low, a saturating activation with a poor initialisation, or labels that do not "
        "match the images.")]


def _double_softmax(output_kind: Optional[str], loss_name: Optional[str]) -> list[dict]:
    if not double_softmax(output_kind, loss_name):
        return []
    return [_finding(
        "double_softmax", "warning",
        "the model ends in a softmax and is trained with cross-entropy, which applies log-softmax itself: "
        "the probabilities are squashed a second time, gradients shrink and training slows. Let the model output "
        "logits (model.softmax_output=false), or output log-probabilities and use loss.name=nll.")]


def _overfitting(history: list[dict], summary: dict) -> list[dict]:
    rows = [r for r in history if all(_finite(r.get(k)) for k in ("train_accuracy", "val_accuracy", "val_loss"))]
    if len(rows) < MIN_EVALS_FOR_TREND:
        return []
    last = rows[-1]
    gap = float(_num(last["train_accuracy"])) - float(_num(last["val_accuracy"]))
    val_losses = [float(_num(r["val_loss"])) for r in rows]
    low = min(val_losses)
    rise = (val_losses[-1] - low) / low if low > 0 else 0.0
    if gap <= OVERFIT_ACC_GAP or rise <= OVERFIT_VAL_LOSS_RISE:
        return []
    low_at = rows[val_losses.index(low)]
    patience = _patience(summary)
    stop = (f"fewer epochs (early stopping is on with a patience of {patience} evaluations; a smaller one stops "
            "sooner)" if patience else "fewer epochs / early stopping (train.early_stopping.patience)")
    return [_finding(
        "overfitting", "warning",
        f"train accuracy is {_pct(gap)} above validation accuracy at the end, and the validation loss has risen "
        f"{_pct(rise)} above its lowest value (step {low_at.get('step')}, epoch {low_at.get('epoch')}): the model "
        f"memorises the training set. Try data augmentation, dropout, weight decay, a smaller model, or {stop}.")]


def _under_trained(history: list[dict], summary: dict, run_dir: Optional[Path]) -> list[dict]:
    acc = _series(history, "val_accuracy")
    if len(acc) < MIN_EVALS_FOR_TREND or summary.get("status") == "pruned":  # a pruned run was cut off on purpose
        return []
    window = min(UNDER_TRAINED_WINDOW, len(acc) - 1)
    gain = acc[-1] - acc[-1 - window]
    if acc[-1] < max(acc) or gain < UNDER_TRAINED_MIN_GAIN:
        return []
    return [_finding(
        "under_trained", "info",
        f"validation accuracy was still improving when training stopped (+{_pct(gain)} over the last "
        f"{window} evaluations, best at the last one): more epochs would probably help; "
        f"{_more_epochs_command(summary, run_dir)}.")]


def _best_position(history: list[dict], monitor: str = "val_accuracy") -> tuple[Optional[int], list[dict]]:
    """The evaluation the trainer kept as best.pt (by the run's ``train.monitor``) among the rows that have it."""
    rows = [r for r in history if _finite(r.get(monitor))]
    if not rows:
        return None, rows
    values = [float(_num(r[monitor])) for r in rows]
    best = min(values) if monitor == "val_loss" else max(values)
    return values.index(best), rows  # the first best is the checkpoint the trainer keeps


def _monitored(summary: dict) -> tuple[str, str]:
    monitor = _setting(summary, "train.monitor", "val_accuracy")
    monitor = monitor if monitor in ("val_accuracy", "val_loss") else "val_accuracy"
    return monitor, ("validation loss" if monitor == "val_loss" else "validation accuracy")


def _early_or_late_best(history: list[dict], already: set[str], summary: dict) -> list[dict]:
    monitor, words = _monitored(summary)
    best, rows = _best_position(history, monitor)
    if best is None or len(rows) < MIN_EVALS_FOR_TREND:
        return []
    if best == len(rows) - 1:
        # The run ended on its best evaluation; under_trained already says so when the gain is clear.
        if "under_trained" in already:
            return []
        return [_finding(
            "late_best", "info",
            f"the best {words} came at the last evaluation (epoch {rows[-1].get('epoch')}), but it "
            "had levelled off: the run is near the end of what this setting can reach.")]
    if summary.get("status") in ("early_stopped", "pruned") or _patience(summary):
        return []  # the run stops on its own already (or was stopped): early stopping is no news to it
    stop = min(best + EARLY_STOP_PATIENCE, len(rows) - 1)

    def clock(r: dict) -> float:
        # Prefer wall time; a history without elapsed_s falls back to iterations.
        return _num(r.get("elapsed_s")) if _finite(r.get("elapsed_s")) else float(_num(r.get("step")) or 0)

    total = clock(rows[-1])
    if total <= 0:
        return []
    saving = 1.0 - clock(rows[stop]) / total
    if saving < EARLY_BEST_MIN_SAVING:
        return []
    return [_finding(
        "early_best", "info",
        f"the best {words} came at epoch {rows[best].get('epoch')} (step {rows[best].get('step')}), "
        f"long before the end (epoch {rows[-1].get('epoch')}): early stopping with a patience of "
        f"{EARLY_STOP_PATIENCE} evaluations would have saved about {100 * saving:.0f} % of the training time "
        "(train.early_stopping.patience).")]


def _lr_too_high(history: list[dict]) -> list[dict]:
    loss = _series(history[:LR_HIGH_FIRST_EVALS], "train_loss")
    if len(loss) < 2 or loss[0] <= 0:
        return []
    peak = max(loss[1:])
    rise = (peak - loss[0]) / loss[0]
    if rise <= LR_HIGH_RISE:
        return []
    return [_finding(
        "lr_too_high", "warning",
        f"the train loss rose by {_pct(rise)} within the first {len(loss)} evaluations "
        f"({loss[0]:.4g} -> {peak:.4g}): the learning rate is probably too high. Lower optim.lr or add a warm-up.")]


def _lr_too_low(history: list[dict]) -> list[dict]:
    loss = _series(history, "train_loss")
    if len(loss) < MIN_EVALS_FOR_TREND or loss[0] <= 0:
        return []
    drop = (loss[0] - min(loss)) / loss[0]
    train_acc = _series(history, "train_accuracy")
    if drop >= LR_LOW_MIN_DROP or (train_acc and train_acc[-1] >= LR_LOW_MAX_TRAIN_ACC):
        return []
    return [_finding(
        "lr_too_low", "warning",
        f"the train loss is nearly flat ({loss[0]:.4g} -> {loss[-1]:.4g}, {_pct(drop)} lower at best over "
        f"{len(loss)} evaluations) while the model fits only {_pct(train_acc[-1]) if train_acc else 'an unknown share'} "
        "of the training set: the learning rate is probably too low. Raise optim.lr (try 3-10x).")]


# ----------------------------------------------------------------------------- entry point


def diagnose(history: list[dict], summary: dict, num_classes: int, model_output_kind: Optional[str],
             loss_name: Optional[str], run_dir: Optional[Path] = None) -> list[dict]:
    """Findings for one run, most severe first: a list of ``{code, severity, message}``.

    ``history`` is the list of metrics.jsonl rows, ``summary`` the run summary (``status`` and the precision),
    ``model_output_kind`` one of logits / log_probs / probs (None if unknown), ``loss_name`` the loss registry name.
    The run's own settings come from ``summary["config"]`` (its schedule, early stopping and monitored metric), so
    no finding advises what the run already does; ``run_dir`` goes into the commands a finding names.
    """
    history = list(history or [])
    summary = summary or {}
    findings: list[dict] = []
    findings += _diverged(history, summary)
    findings += _double_softmax(model_output_kind, loss_name)
    diverged = bool(findings and findings[0]["code"] == "diverged")
    # After a divergence the trend rules would only describe the blow-up again; keep the message focused.
    if not diverged:
        findings += _loss_rose(history, summary, int(num_classes or 0))
        findings += _stuck_at_chance(history, int(num_classes or 0))
        if "loss_rose" not in {f["code"] for f in findings}:  # the same rise, told once
            findings += _lr_too_high(history)
        findings += _lr_too_low(history)
        findings += _overfitting(history, summary)
        findings += _under_trained(history, summary, run_dir)
        findings += _early_or_late_best(history, {f["code"] for f in findings}, summary)
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(findings, key=lambda f: rank[f["severity"]])  # stable: rule order within a severity


def diagnose_run(run_dir) -> list[dict]:
    """Findings for a run folder from its files (for runs whose summary.json has none stored).

    The model's output kind is read from ``summary.model.output_kind``; older folders without it
    count a config with ``model.softmax_output: true`` as "probs".
    """
    run_dir = Path(run_dir)
    history = runs.read_metrics(run_dir)
    summary = runs.read_summary(run_dir) or {}
    config = summary.get("config") or {}
    classes = summary.get("classes") or []
    output_kind = (summary.get("model") or {}).get("output_kind") or (
        "probs" if (config.get("model") or {}).get("softmax_output") else None)
    return diagnose(history, summary, len(classes), output_kind, (config.get("loss") or {}).get("name"), run_dir)
