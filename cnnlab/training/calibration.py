"""Calibration: how far a run's confidence can be trusted, and one number that improves it.

:func:`calibration_scores` gives a split's expected calibration error (ECE) and the reliability diagram's
bins: the predictions are put into ``BINS`` equal-width bins of confidence (the top class's probability;
bin ``b`` holds ``b/15 < p <= (b+1)/15``, and a confidence of 0 goes to the first bin), and

    ECE = sum over bins of (n_b / N) * |accuracy_b - mean confidence_b|

(Guo et al., 2017, "On calibration of modern neural networks"). The trainer's :class:`~cnnlab.training.scoring.Evaluator`
adds both to every split it scores in full (summary.json ``test.ece``, ``test.reliability``).

:func:`fit_temperature` is temperature scaling (the same paper): one scalar ``T > 0`` that divides the
network's log-probabilities before the softmax, fitted by LBFGS to minimise the negative log-likelihood of
the validation split. It never changes the predicted class (dividing by ``T`` keeps the order of the
scores), only how sure the probabilities are. :func:`calibrate_run` fits it at the end of a run and
records it in summary.json ``calibration``; ``cnnlab predict --calibrated`` applies it.
"""
from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from cnnlab.data.batches import eval_batches
from cnnlab.models import transfer

BINS = 15


def calibration_scores(confidence: torch.Tensor, correct: torch.Tensor, bins: int = BINS) -> dict:
    """``{"ece", "reliability": {"bins", "confidence", "accuracy", "count"}}`` of predictions with top-class
    probabilities ``confidence`` [N] and hits ``correct`` [N] (bool). An empty bin's mean confidence and accuracy
    are None. ECE weighs each bin by its share of the N predictions."""
    conf = confidence.detach().double().cpu().clamp(0.0, 1.0)
    hit = correct.detach().cpu().double()
    n = len(conf)
    if n == 0:
        return {"ece": None, "reliability": None}
    which = (torch.ceil(conf * bins).long() - 1).clamp(0, bins - 1)  # (b/bins, (b+1)/bins] -> b
    count = torch.bincount(which, minlength=bins).double()
    conf_sum = torch.bincount(which, weights=conf, minlength=bins)
    hit_sum = torch.bincount(which, weights=hit, minlength=bins)
    ece = float((conf_sum - hit_sum).abs().sum() / n)  # sum_b n_b/N |acc_b - conf_b| = sum_b |hits_b - conf_b| / N
    mean = lambda s: [float(v / c) if c else None for v, c in zip(s.tolist(), count.tolist())]  # noqa: E731
    return {"ece": ece, "reliability": {"bins": bins, "confidence": mean(conf_sum), "accuracy": mean(hit_sum),
                                        "count": [int(c) for c in count.tolist()]}}


def log_probs_of(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Log-probabilities from what a network returned (``logits``, ``log_probs`` or ``probs``), in float64.
    Dividing them by T and taking the softmax is the same as dividing the logits by T (a constant per row)."""
    out = out.detach().double()
    if kind == "probs":
        return out.clamp_min(1e-12).log()
    return out if kind == "log_probs" else out.log_softmax(1)


def scaled_probs(log_probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Class probabilities after temperature scaling: softmax(log p / T)."""
    return (log_probs / temperature).softmax(1)


def fit_temperature(log_probs: torch.Tensor, y: torch.Tensor, max_iter: int = 100) -> float:
    """The temperature T > 0 minimising the mean negative log-likelihood of softmax(log_probs / T) on labels ``y``:
    LBFGS (strong Wolfe line search) on log T, so T stays positive; starts at T = 1."""
    z, y = log_probs.detach().double().cpu().clone(), y.detach().long().cpu().clone()  # not inference tensors
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def nll(log_probs: torch.Tensor, y: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of softmax(log_probs / T)."""
    return float(F.cross_entropy(log_probs.double().cpu() / temperature, y.long().cpu()))


@torch.inference_mode()
def split_log_probs(evaluator, model, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A split's log-probabilities [N, classes] on the CPU (float64), as the evaluator scores it (its precision,
    preprocessing and test-time augmentation)."""
    was_training = model.training
    model.eval()
    kind = "log_probs" if evaluator.tta != "none" else evaluator.output_kind
    parts = [log_probs_of(evaluator.outputs(model, xb).float(), kind).cpu()
             for xb, _ in eval_batches(x, y, evaluator.batch_size)]
    transfer.set_train_mode(model, was_training)  # frozen batch norm stays in eval mode
    return torch.cat(parts) if parts else torch.zeros(0, evaluator.num_classes, dtype=torch.float64)


def calibrate_run(evaluator, model, inputs) -> dict | None:
    """summary.json's ``calibration``: the temperature fitted on the validation split, the validation NLL and the
    test split's ECE before and after it; None without a validation split (``data.val_size: 0``)."""
    if len(inputs.val_y) == 0:
        return None
    val = split_log_probs(evaluator, model, inputs.val_x, inputs.val_y)
    t = fit_temperature(val, inputs.val_y)
    record = {"temperature": t, "fitted_on": "val", "val_nll": nll(val, inputs.val_y),
              "val_nll_calibrated": nll(val, inputs.val_y, t)}
    if len(inputs.test_y):
        test, y = split_log_probs(evaluator, model, inputs.test_x, inputs.test_y), inputs.test_y.cpu()
        for key, temp in (("test_ece", 1.0), ("test_ece_calibrated", t)):
            conf, pred = scaled_probs(test, temp).max(1)
            record[key] = calibration_scores(conf, pred == y)["ece"]
    return record
