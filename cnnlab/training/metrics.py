"""Classification metrics from a confusion matrix built on the device.

Everything (accuracy, macro and per-class precision / recall / F1, support) is
derived from one ``num_classes × num_classes`` confusion matrix, so a whole split
is scored with a single ``bincount`` and one copy to the host. Classes that are
never predicted get precision 0 (scikit-learn's ``zero_division=0``).
"""
from __future__ import annotations

import torch

from cnnlab.outputs import shown


def confusion_matrix(true: torch.Tensor, pred: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Rows are true classes, columns predicted classes (scikit-learn's layout)."""
    idx = true.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def scores(confusion: torch.Tensor) -> dict:
    """Accuracy, macro P/R/F1 and per-class lists from a confusion matrix."""
    cm = confusion.double().cpu()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp_min(1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp_min(1e-300), torch.zeros_like(tp))
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else 0.0,
        # the mean recall over the classes present: accuracy as if every class had as many images
        "balanced_accuracy": float(recall[support > 0].mean()) if bool((support > 0).any()) else 0.0,
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
        "f1_macro": float(f1.mean()),
        "per_class": {
            "precision": precision.tolist(),
            "recall": recall.tolist(),
            "f1": f1.tolist(),
            "support": [int(s) for s in support.tolist()],
        },
        "confusion": confusion.cpu().long().tolist(),
    }


def is_imbalanced(support: list[int], ratio: float = 1.5) -> bool:
    """Whether the largest class has over ``ratio`` times the images of the smallest (the per-class tables then
    show balanced accuracy beside accuracy)."""
    present = [s for s in support if s > 0]
    return bool(present) and max(present) > ratio * min(present)


def format_per_class(split_scores: dict, classes: list[str]) -> str:
    """A plain-text per-class table (class | precision | recall | F1 | support)."""
    pc = split_scores["per_class"]
    classes = [shown(c) for c in classes]  # a class folder's name is any text: printable, not too long
    width = max(8, *(len(c) for c in classes))
    lines = [f"{'class':<{width}}  precision  recall     f1  support"]
    for i, name in enumerate(classes):
        lines.append(f"{name:<{width}}  {pc['precision'][i]:9.4f}  {pc['recall'][i]:6.4f}  {pc['f1'][i]:.4f}  {pc['support'][i]:7d}")
    lines.append(f"{'macro':<{width}}  {split_scores['precision_macro']:9.4f}  {split_scores['recall_macro']:6.4f}  "
                 f"{split_scores['f1_macro']:.4f}  {sum(pc['support']):7d}")
    lines.append(f"accuracy {split_scores['accuracy']:.4f}")
    if is_imbalanced(pc["support"]) and "balanced_accuracy" in split_scores:
        lines.append(f"balanced accuracy {split_scores['balanced_accuracy']:.4f} (mean recall: the classes are "
                     f"imbalanced, {min(pc['support'])} to {max(pc['support'])} images)")
    return "\n".join(lines)


def format_confusion(confusion, classes: list[str]) -> str:
    """A confusion matrix as text: one row per true class, one column per predicted class."""
    cells = [[str(int(v)) for v in row] for row in confusion]
    name_w = max(4, *(len(c) for c in classes))
    col_w = max(3, *(len(c[:8]) for c in classes), *(len(v) for row in cells for v in row))
    lines = [f"{'true':<{name_w}}  " + " ".join(f"{c[:8]:>{col_w}}" for c in classes)]
    for name, row in zip(classes, cells):
        lines.append(f"{name:<{name_w}}  " + " ".join(f"{v:>{col_w}}" for v in row))
    return "\n".join(lines)
