"""Keras-like ``fit`` / ``evaluate`` / ``predict`` for any ``torch.nn.Module``.

``fit`` shuffles with a generator derived from ``(seed, epoch)`` and re-seeds torch's global RNG
(dropout, noise) the same way at each epoch start, so two runs under one seed produce the same
History, and a run resumed from a checkpoint continues exactly as the uninterrupted run would.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from tqdm.auto import tqdm

from ..models import _layers
from ..optim import Adam, AdamW
from .callbacks import Callback
from .checkpoint import load_checkpoint, save_checkpoint
from .history import History
from .metrics import classification_report, confusion_matrix

LossFn = Callable[[Tensor, Tensor], Tensor]
Data = tuple[Tensor, Tensor] | torch.utils.data.TensorDataset

#: Progress bars appear on epochs of at least this many batches (short loops print one line).
PROGRESS_MIN_BATCHES = 50


def _sequence_aware(fn: LossFn) -> LossFn:
    """Lets a class-index loss take (N, T, C) logits with (N, T) targets (language models)."""

    def loss(out: Tensor, target: Tensor) -> Tensor:
        if out.dim() == 3 and target.dim() == 2:
            return fn(out.reshape(-1, out.shape[-1]), target.reshape(-1))
        return fn(out, target)

    return loss


def resolve_loss(loss: str | LossFn) -> LossFn:
    """``"cross_entropy"`` (ours when available, via models._layers), ``"mse"``, ``"bce"``, or a callable."""
    if callable(loss):
        return loss
    table: dict[str, LossFn] = {
        "cross_entropy": _sequence_aware(_layers.cross_entropy),
        "mse": F.mse_loss,
        "bce": F.binary_cross_entropy,
    }
    if loss not in table:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(table)} or a callable")
    return table[loss]


def resolve_optimizer(
    optimizer: str | torch.optim.Optimizer, model: torch.nn.Module
) -> torch.optim.Optimizer:
    """An optimizer instance, or ``"adam"`` / ``"adamw"`` (bigmodel_native's) / ``"sgd"`` with defaults."""
    if isinstance(optimizer, torch.optim.Optimizer):
        return optimizer
    makers = {
        "adam": lambda p: Adam(p, lr=1e-3),
        "adamw": lambda p: AdamW(p, lr=1e-3),
        "sgd": lambda p: torch.optim.SGD(p, lr=0.01),
    }
    if optimizer not in makers:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {sorted(makers)} or an instance")
    return makers[optimizer](model.parameters())


def _as_tensors(data: Data, what: str) -> tuple[Tensor, Tensor]:
    if isinstance(data, torch.utils.data.TensorDataset):
        data = tuple(data.tensors)  # type: ignore[assignment]
    if not isinstance(data, tuple | list) or len(data) != 2:
        raise TypeError(f"{what} must be an (inputs, targets) pair of tensors or a TensorDataset of two")
    x, y = data
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"{what} must hold tensors, got {type(x).__name__} and {type(y).__name__}")
    if len(x) != len(y):
        raise ValueError(f"{what}: {len(x)} inputs but {len(y)} targets")
    return x, y


def _device_of(model: torch.nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919 + 17) % (2**63)


def _is_classification(target: Tensor) -> bool:
    return not target.is_floating_point()


@torch.no_grad()
def _run_eval(
    model: torch.nn.Module, x: Tensor, y: Tensor, loss_fn: LossFn, batch_size: int, want_accuracy: bool
) -> tuple[float, float | None, Tensor | None]:
    """Mean loss, accuracy (if asked) and the predicted classes (for classification)."""
    was_training = model.training
    model.eval()
    dev = _device_of(model)
    total = torch.zeros((), dtype=torch.float64, device=dev)
    preds: list[Tensor] = []
    for i in range(0, len(x), batch_size):
        xb = x[i : i + batch_size].to(dev, non_blocking=True)
        yb = y[i : i + batch_size].to(dev, non_blocking=True)
        out = model(xb)
        total += loss_fn(out, yb).double() * len(xb)
        if want_accuracy:
            preds.append(out.argmax(-1))
    model.train(was_training)
    n = max(len(x), 1)
    if not want_accuracy:
        return float(total) / n, None, None
    pred = torch.cat(preds) if preds else torch.empty(0, dtype=torch.int64, device=dev)
    acc = float((pred == y.to(dev)).double().mean()) if len(y) else float("nan")
    return float(total) / n, acc, pred


def fit(
    model: torch.nn.Module,
    data: Data,
    *,
    epochs: int,
    batch_size: int = 32,
    optimizer: str | torch.optim.Optimizer = "adam",
    loss: str | LossFn = "cross_entropy",
    validation_split: float | None = None,
    validation_data: Data | None = None,
    metrics: Sequence[str] | str = "auto",
    callbacks: Sequence[Callback] = (),
    seed: int | None = None,
    shuffle: bool = True,
    verbose: int = 1,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every: int = 1,
    history: History | None = None,
) -> History:
    """Trains ``model`` on ``data = (inputs, targets)`` for ``epochs`` epochs; returns the History.

    - ``validation_split``: the *last* fraction of ``data`` (before shuffling, as Keras) is held out.
    - ``metrics``: ``"auto"`` logs accuracy when the targets are class indices; ``[]`` logs none.
    - ``verbose``: 0 silent, 1 progress bar on long epochs and one line per epoch, 2 lines only.
    - ``checkpoint_dir``: a checkpoint after every epoch; with ``resume=True`` the run starts from
      the latest one found there (weights, optimizer, callbacks' state, History).
      ``checkpoint_every`` thins the checkpoints (the last epoch is always written).

    Inside a torch.distributed process group this is :func:`.distributed.fit_distributed` (DDP).
    """
    from .distributed import fit_distributed, is_distributed

    if is_distributed():
        return fit_distributed(
            model, data, epochs=epochs, batch_size=batch_size, optimizer=optimizer, loss=loss,
            validation_split=validation_split, validation_data=validation_data, metrics=metrics,
            callbacks=callbacks, seed=seed, shuffle=shuffle, verbose=verbose, checkpoint_dir=checkpoint_dir,
            resume=resume, checkpoint_every=checkpoint_every, history=history,
        )  # fmt: skip
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if validation_split is not None and validation_data is not None:
        raise ValueError("give validation_split or validation_data, not both")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs checkpoint_dir")
    x, y = _as_tensors(data, "data")
    if validation_split is not None:
        if not 0.0 < validation_split < 1.0:
            raise ValueError(f"validation_split must be in (0, 1), got {validation_split}")
        cut = len(x) - int(len(x) * validation_split)
        x, y, validation_data = x[:cut], y[:cut], (x[cut:], y[cut:])
    val = _as_tensors(validation_data, "validation_data") if validation_data is not None else None
    if len(x) == 0:
        raise ValueError("no training samples")
    dev = _device_of(model)
    x, y = x.to(dev), y.to(dev)
    if val is not None:
        val = (val[0].to(dev), val[1].to(dev))
    opt = resolve_optimizer(optimizer, model)
    loss_fn = resolve_loss(loss)
    if metrics == "auto":
        metrics = ["accuracy"] if _is_classification(y) else []
    elif isinstance(metrics, str):
        metrics = [metrics]
    unknown = [m for m in metrics if m != "accuracy"]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; supported: ['accuracy']")
    want_acc = "accuracy" in metrics

    hist = history if history is not None else History()
    start = 0
    if resume:
        loaded = load_checkpoint(checkpoint_dir, model, opt)  # type: ignore[arg-type]
        if loaded is not None:
            hist_loaded, trainer_state = loaded
            hist.records = hist_loaded.records
            hist.meta.update(hist_loaded.meta)
            for i, cb in enumerate(callbacks):
                st = trainer_state.get("callbacks", {}).get(i)
                if st is not None and hasattr(cb, "load_state_dict"):
                    cb.load_state_dict(st)
            if "rng" in trainer_state:
                torch.set_rng_state(trainer_state["rng"])
            start = hist.epochs_done
            if verbose:
                print(f"resumed from {checkpoint_dir} after epoch {start}", file=sys.stderr)

    for cb in callbacks:
        cb.stop_training = False
        cb.on_train_begin({"epochs": epochs, "start_epoch": start})
    n = len(x)
    n_batches = (n + batch_size - 1) // batch_size
    model.train()
    for epoch in range(start, epochs):
        for cb in callbacks:
            cb.on_epoch_begin(epoch)
        gen = None
        if seed is not None:
            s = _epoch_seed(seed, epoch)
            torch.manual_seed(s)
            gen = torch.Generator().manual_seed(s)
        order = torch.randperm(n, generator=gen).to(dev) if shuffle else None
        lr = float(opt.param_groups[0]["lr"])
        total_loss = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.int64, device=dev)
        count = 0
        bar = tqdm(
            total=n_batches,
            desc=f"epoch {epoch + 1}/{epochs}",
            unit="batch",
            leave=False,
            disable=verbose != 1 or n_batches < PROGRESS_MIN_BATCHES,
            file=sys.stderr,
        )
        t0 = time.perf_counter()
        for b in range(n_batches):
            if order is not None:
                idx = order[b * batch_size : (b + 1) * batch_size]
                xb, yb = x[idx], y[idx]
            else:
                xb, yb = x[b * batch_size : (b + 1) * batch_size], y[b * batch_size : (b + 1) * batch_size]
            opt.zero_grad(set_to_none=True)
            out = model(xb)
            batch_loss = loss_fn(out, yb)
            batch_loss.backward()
            opt.step()
            with torch.no_grad():
                total_loss += batch_loss.detach().double() * len(xb)
                if want_acc:
                    correct += (out.argmax(-1) == yb).sum()
            count += yb.numel() if want_acc else len(xb)
            if not bar.disable:
                bar.update(1)
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{batch_loss.item():.4f}")
        bar.close()
        elapsed = time.perf_counter() - t0
        logs: dict[str, float] = {"epoch": epoch + 1, "loss": float(total_loss) / n}
        if want_acc:
            logs["accuracy"] = float(correct) / max(count, 1)
        if val is not None:
            vl, va, _ = _run_eval(model, val[0], val[1], loss_fn, max(batch_size, 256), want_acc)
            logs["val_loss"] = vl
            if va is not None:
                logs["val_accuracy"] = va
        logs["lr"] = lr
        logs["time_s"] = elapsed
        logs["samples_per_s"] = n / elapsed if elapsed > 0 else float("inf")
        for cb in callbacks:
            cb.on_epoch_end(epoch, logs)
        hist.append(logs)
        if verbose:
            print(format_epoch(logs, epochs), flush=True)
        last = epoch + 1 == epochs or any(cb.stop_training for cb in callbacks)
        if checkpoint_dir is not None and (last or (epoch + 1) % max(1, checkpoint_every) == 0):
            state: dict[str, Any] = {
                "callbacks": {
                    i: cb.state_dict() for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")
                },
                "rng": torch.get_rng_state(),
            }
            save_checkpoint(checkpoint_dir, model, opt, hist, state)
        if any(cb.stop_training for cb in callbacks):
            break
    for cb in callbacks:
        cb.on_train_end({"history": hist})
    return hist


def format_epoch(logs: dict[str, float], epochs: int) -> str:
    parts = [f"epoch {int(logs['epoch'])}/{epochs}"]
    for k in ("loss", "accuracy", "val_loss", "val_accuracy"):
        if k in logs:
            parts.append(f"{k} {logs[k]:.4f}")
    parts.append(f"{logs['time_s']:.1f}s")
    parts.append(f"{logs['samples_per_s']:,.0f} samples/s")
    return "  ".join(parts)


def evaluate(
    model: torch.nn.Module,
    data: Data,
    *,
    batch_size: int = 256,
    loss: str | LossFn = "cross_entropy",
    num_classes: int | None = None,
) -> dict[str, Any]:
    """Loss; for class-index targets also accuracy, per-class and macro precision/recall/F1 and
    the confusion matrix (rows: true class, columns: predicted).

    Inside a torch.distributed process group each rank evaluates a slice and the results are summed
    (:func:`.distributed.evaluate_distributed`)."""
    from .distributed import evaluate_distributed, is_distributed

    if is_distributed():
        return evaluate_distributed(model, data, batch_size=batch_size, loss=loss, num_classes=num_classes)
    x, y = _as_tensors(data, "data")
    loss_fn = resolve_loss(loss)
    classify = _is_classification(y)
    vl, acc, pred = _run_eval(model, x, y, loss_fn, batch_size, classify)
    out: dict[str, Any] = {"loss": vl}
    if not classify:
        return out
    assert pred is not None and acc is not None
    if num_classes is None:
        num_classes = int(model(x[:1].to(_device_of(model))).shape[-1]) if len(x) else 0
    cm = confusion_matrix(pred, y, num_classes)
    report = classification_report(cm)
    out.update(report)
    out["accuracy"] = acc
    out["confusion_matrix"] = cm.tolist()
    return out


@torch.no_grad()
def predict(model: torch.nn.Module, x: Tensor, *, batch_size: int = 256, softmax: bool = False) -> Tensor:
    """The model's outputs for ``x`` (batched, eval mode, on CPU); ``softmax=True`` gives probabilities."""
    was_training = model.training
    model.eval()
    dev = _device_of(model)
    outs = [model(x[i : i + batch_size].to(dev)).cpu() for i in range(0, len(x), batch_size)]
    model.train(was_training)
    out = torch.cat(outs) if outs else torch.empty(0)
    return torch.softmax(out, dim=-1) if softmax else out
