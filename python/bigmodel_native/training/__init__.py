"""A Keras-like training loop: ``fit``, ``evaluate``, ``predict``, History, callbacks, checkpoints, plots."""

from __future__ import annotations

from .callbacks import Callback, EarlyStopping, LambdaCallback, LRScheduler
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .gan import fit_gan
from .history import History
from .loop import evaluate, fit, predict
from .metrics import accuracy, classification_report, confusion_matrix

__all__ = [
    "Callback",
    "EarlyStopping",
    "History",
    "LRScheduler",
    "LambdaCallback",
    "accuracy",
    "classification_report",
    "confusion_matrix",
    "evaluate",
    "fit",
    "fit_gan",
    "latest_checkpoint",
    "load_checkpoint",
    "predict",
    "save_checkpoint",
]
