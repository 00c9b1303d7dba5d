"""Classification metrics: accuracy, confusion matrix, per-class and macro precision/recall/F1."""

from __future__ import annotations

import torch
from torch import Tensor


def accuracy(logits: Tensor, target: Tensor) -> float:
    """Fraction of rows whose arg-max over the last dimension equals ``target``."""
    if target.numel() == 0:
        return float("nan")
    return float((logits.argmax(-1) == target).float().mean())


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """(num_classes, num_classes) int64 counts; row = true class, column = predicted class."""
    pred = pred.reshape(-1).long().cpu()
    target = target.reshape(-1).long().cpu()
    for name, t in (("target", target), ("prediction", pred)):
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
            raise ValueError(f"{name} class out of range [0, {num_classes})")
    flat = target * num_classes + pred
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


def _safe_div(a: Tensor, b: Tensor) -> Tensor:
    # scikit-learn's zero_division=0: a class never predicted (or absent) scores 0, not NaN.
    return torch.where(b > 0, a / torch.where(b > 0, b, torch.ones_like(b)), torch.zeros_like(a))


def classification_report(cm: Tensor) -> dict[str, object]:
    """Per-class and macro precision, recall and F1 (and support) from a confusion matrix."""
    cm = cm.double()
    tp = cm.diag()
    predicted = cm.sum(0)
    actual = cm.sum(1)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, actual)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total > 0 else float("nan"),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "f1": f1.tolist(),
        "support": actual.long().tolist(),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
    }
