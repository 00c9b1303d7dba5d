"""Callbacks for :func:`~bigmodel_native.training.fit` (a small subset of Keras' protocol).

A callback with ``state_dict``/``load_state_dict`` has its state saved in checkpoints, so that a
resumed run continues with, for example, the learning-rate schedule where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


class Callback:
    """Hooks called by ``fit``; ``self.stop_training = True`` ends training after the epoch."""

    stop_training: bool = False

    def on_train_begin(self, logs: dict[str, Any]) -> None: ...

    def on_epoch_begin(self, epoch: int) -> None: ...

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None: ...

    def on_train_end(self, logs: dict[str, Any]) -> None: ...


class LRScheduler(Callback):
    """Steps a torch LR scheduler once per epoch (learning-rate decay); its state is checkpointed."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
        self.scheduler = scheduler

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state)


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    def __init__(
        self, monitor: str = "val_loss", patience: int = 3, min_delta: float = 0.0, mode: str = "min"
    ):
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor, self.patience, self.min_delta, self.mode = monitor, patience, min_delta, mode
        self.best: float | None = None
        self.wait = 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, which this run does not log")
        value = logs[self.monitor]
        sign = 1.0 if self.mode == "min" else -1.0
        if self.best is None or sign * (self.best - value) > self.min_delta:
            self.best, self.wait = value, 0
        else:
            self.wait += 1
            if self.wait >= self.patience:
                self.stop_training = True

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.wait = state["best"], state["wait"]


class LambdaCallback(Callback):
    """Calls ``on_epoch_end(epoch, logs)`` (e.g. to draw a plot each epoch)."""

    def __init__(self, on_epoch_end: Callable[[int, dict[str, float]], None]) -> None:
        self._fn = on_epoch_end

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self._fn(epoch, logs)
