"""Checkpoints that an interrupted run can never leave half-written.

Layout of a checkpoint directory::

    LATEST                   name of the newest complete checkpoint (replaced atomically)
    epoch-0003/
        model.safetensors    the weights (safetensors: no code runs when loading them)
        optimizer.pt         the optimizer's state_dict (torch.load(weights_only=True))
        trainer.pt           callbacks' state (e.g. LR schedulers) and the RNG state
        history.json         the History up to and including this epoch

A checkpoint is written into a hidden temporary folder, flushed, renamed to ``epoch-NNNN``, and
only then does ``LATEST`` (itself written to a temporary file and renamed) point at it; older
checkpoints are removed afterwards. A crash at any point leaves ``LATEST`` naming a whole
checkpoint (or none yet).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from .history import History, atomic_write_bytes

LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(
    directory: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    history: History,
    trainer_state: dict[str, Any] | None = None,
    keep_last: int = 1,
) -> Path:
    """Writes the checkpoint of epoch ``history.epochs_done`` and returns its folder."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    name = f"epoch-{history.epochs_done:04d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_model(model, str(tmp / "model.safetensors"))
    for fname, obj in (
        ("optimizer.pt", optimizer.state_dict() if optimizer is not None else {}),
        ("trainer.pt", trainer_state or {}),
    ):
        buf = io.BytesIO()
        torch.save(obj, buf)
        atomic_write_bytes(tmp / fname, buf.getvalue())
    history.save(tmp / "history.json")
    with open(tmp / "model.safetensors", "rb+") as f:
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    final = root / name
    if final.exists():
        # Only reachable when a run re-writes an epoch (e.g. a restart without --resume).
        stale = root / f".{name}.stale-{os.getpid()}"
        os.replace(final, stale)
        shutil.rmtree(stale, ignore_errors=True)
    os.replace(tmp, final)
    _fsync_dir(root)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    _prune(root, keep_last)
    return final


def _prune(root: Path, keep_last: int) -> None:
    done = sorted(p for p in root.glob("epoch-*") if p.is_dir())
    latest = latest_checkpoint(root)
    for p in done[: max(0, len(done) - keep_last)]:
        if p != latest:
            shutil.rmtree(p, ignore_errors=True)


def latest_checkpoint(directory: str | os.PathLike[str]) -> Path | None:
    """The folder ``LATEST`` names, or None when the directory holds no complete checkpoint."""
    root = Path(directory)
    try:
        name = (root / LATEST).read_text().strip()
    except FileNotFoundError:
        return None
    path = root / name
    if not name.startswith("epoch-") or not path.is_dir():
        raise FileNotFoundError(f"{root / LATEST} names {name!r}, which is not a checkpoint folder")
    return path


def load_checkpoint(
    directory: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[History, dict[str, Any]] | None:
    """Loads the latest checkpoint into ``model`` (and ``optimizer``); returns (history, trainer state).

    Returns None when there is no checkpoint yet.
    """
    path = latest_checkpoint(directory)
    if path is None:
        return None
    device = next(iter(model.parameters()), torch.empty(0)).device
    missing, unexpected = load_model(model, str(path / "model.safetensors"), strict=True, device=str(device))
    del missing, unexpected  # strict=True already raised on either
    if optimizer is not None:
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    trainer_state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
    return History.load(path / "history.json"), trainer_state
